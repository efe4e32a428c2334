//! Issue 11, "fix it and find it", in the browser: editing your own message
//! in place and "(edited)" in the other browser, a deletion reaching every
//! open page at once, search across rooms and opening a result at its
//! message, "is typing…", ✓✓ with "Seen by …", and axe-core in the new
//! states.

use std::time::Duration;

use parlor::store::{NewMessage, Store};
use serde_json::{Value, json};

use crate::axe;
use crate::cdp::{Browser, Key, Page, js_string};
use crate::support::{TempDir, TestServer, now_ms};
use crate::{
    CHAT_READY, in_room, say, seed, set_up, set_up_with, sign_in, str_of, switch_room,
    wait_message, wait_people,
};

/// A phone's viewport (the 360×740).
const PHONE: (u32, u32) = (360, 740);

/// Records every frame the page sends in `window.__sent` (with the page's
/// clock), and lets a test rewrite the next ones with `window.__rewrite`:
/// how the tests provoke refusals the page itself never asks for (editing
/// someone else's message, deleting one that is gone).
const RECORD_SENDS: &str = "(() => {
    const send = WebSocket.prototype.send;
    window.__sent = [];
    window.__rewrite = null;
    WebSocket.prototype.send = function (data) {
        let frame = JSON.parse(data);
        if (window.__rewrite) frame = window.__rewrite(frame) || frame;
        window.__sent.push({frame, at: Date.now()});
        return send.call(this, JSON.stringify(frame));
    };
})();";

/// The selector of the message stored as `seq`.
fn li(seq: &str) -> String {
    format!("#msg-list li.msg[data-seq=\"{seq}\"]")
}

fn seq_of(message: &Value) -> String {
    let seq = str_of(&message["seq"]);
    assert!(!seq.is_empty(), "a stored message has a seq: {message}");
    seq.to_string()
}

/// What the message stored as `seq` shows: its text, "(edited)" and its
/// tooltip, its ✓, Edit and Delete, and whether it is being edited.
fn shown(page: &mut Page, seq: &str) -> Value {
    page.eval(&format!(
        "(() => {{
            const li = document.querySelector({sel});
            if (!li) return null;
            const edited = li.querySelector('.msg-edited');
            const status = li.querySelector('.msg-status');
            return {{
                text: li.querySelector('.msg-text').textContent,
                edited: edited && !edited.hidden ? edited.textContent : null,
                editedTitle: edited ? edited.title : null,
                deleted: li.classList.contains('deleted'),
                status: status.textContent, statusTitle: status.title,
                actions: Array.from(li.querySelectorAll('.msg-actions button'), (b) => b.getAttribute('aria-label')),
                editing: !!li.querySelector('.msg-editor'),
            }};
        }})()",
        sel = js_string(&li(seq))
    ))
}

/// Waits until the message stored as `seq` shows what `condition` (about
/// `m`, see [`shown`]) asks for, and returns what it shows.
fn wait_shown(page: &mut Page, what: &str, seq: &str, condition: &str) -> Value {
    let js = format!(
        "(() => {{ const li = document.querySelector({sel}); if (!li) return null;
            const edited = li.querySelector('.msg-edited');
            const m = {{ text: li.querySelector('.msg-text').textContent,
                edited: edited && !edited.hidden ? edited.textContent : null,
                deleted: li.classList.contains('deleted'),
                status: li.querySelector('.msg-status').textContent,
                editing: !!li.querySelector('.msg-editor') }};
            return ({condition}) ? true : null; }})()",
        sel = js_string(&li(seq))
    );
    page.wait_for(what, &js);
    shown(page, seq)
}

/// The element with the focus, as a short description.
fn focused(page: &mut Page) -> String {
    str_of(&page.eval(
        "(() => { const el = document.activeElement;
            return el.id ? '#' + el.id : el.tagName.toLowerCase() + '.' + Array.from(el.classList).join('.')
                + (el.getAttribute('aria-label') ? '[' + el.getAttribute('aria-label') + ']' : ''); })()",
    ))
    .to_string()
}

/// Runs axe-core in light and dark, at the desktop size and on a phone.
fn axe_everywhere(page: &mut Page, state: &str) {
    axe::check_light_and_dark(page, state);
    page.set_viewport(PHONE.0, PHONE.1, true);
    axe::check_light_and_dark(page, &format!("{state}-phone"));
    page.set_viewport(1280, 800, false);
}

// ---- Typing ------------------------------------------------------------------------

#[test]
fn typing_shows_under_the_messages_and_ends_with_the_message_or_after_five_seconds() {
    let Some((mut browser, server, url)) = set_up("typing", &[("general", 3)]) else {
        return;
    };
    let mut alice = browser.new_person("alice");
    let mut bob = browser.new_person("bob");
    bob.add_init_script(RECORD_SENDS);
    sign_in(&mut alice, &url, "alice");
    sign_in(&mut bob, &url, "bob");
    wait_people(&mut alice, &["alice", "bob"]);
    let line = alice.eval(
        "(() => { const el = document.getElementById('typing');
            return {live: el.getAttribute('aria-live'), role: el.getAttribute('role'), text: el.textContent}; })()",
    );
    assert_eq!(
        line,
        json!({"live": null, "role": null, "text": ""}),
        "the typing line is plain text, not a live region"
    );

    bob.click("#composer-input");
    bob.type_text("on my way, just parking the bike");
    alice.wait_for(
        "bob typing",
        "document.getElementById('typing').textContent === 'bob is typing…'",
    );
    alice.screenshot("typing-bob");
    // bob's page told the room at most once every 2 s.
    let times = bob.eval("window.__sent.filter((s) => s.frame.type === 'typing').map((s) => s.at)");
    let times: Vec<i64> = times
        .as_array()
        .expect("an array")
        .iter()
        .map(|t| t.as_i64().expect("a time"))
        .collect();
    assert!(!times.is_empty(), "typing was sent");
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= 2000,
            "typing sent more often than every 2 s: {times:?}"
        );
    }
    bob.press(Key::Enter);
    wait_message(
        &mut alice,
        "bob's message",
        "on my way, just parking the bike",
        "true",
    );
    assert_eq!(
        alice.text("#typing"),
        "",
        "bob's message ends his typing at once"
    );

    // Others, by protocol; each typing frame is relayed to alice.
    let mut carol = server.login_in("carol", "general");
    let mut dave = server.login_in("dave", "general");
    let mut erin = server.login_in("erin", "general");
    wait_people(&mut alice, &["alice", "bob", "carol", "dave", "erin"]);
    carol.send_json(json!({"type": "typing"}));
    alice.wait_for(
        "carol typing",
        "document.getElementById('typing').textContent === 'carol is typing…'",
    );
    dave.send_json(json!({"type": "typing"}));
    alice.wait_for(
        "carol and dave typing",
        "document.getElementById('typing').textContent === 'carol and dave are typing…'",
    );
    alice.screenshot("typing-two");
    erin.send_json(json!({"type": "typing"}));
    alice.wait_for(
        "three typing",
        "document.getElementById('typing').textContent === 'Several people are typing…'",
    );
    alice.screenshot("typing-several");
    // carol's message ends her typing only.
    let ack = carol.say("c-1", "here it is");
    assert_eq!(ack["type"], "ack", "{ack}");
    wait_message(&mut alice, "carol's message", "here it is", "true");
    assert_eq!(alice.text("#typing"), "dave and erin are typing…");
    // Five seconds without another "typing" end the rest.
    alice.wait_for_within(
        Duration::from_secs(15),
        "the typing line to clear by itself",
        "document.getElementById('typing').textContent === ''",
    );
    alice.assert_no_exceptions();
    bob.assert_no_exceptions();
}

// ---- Seen by -----------------------------------------------------------------------

#[test]
fn double_ticks_and_seen_by_once_everyone_in_the_room_has_read_it() {
    let Some((mut browser, server, url)) = set_up("seen", &[("general", 2), ("design", 2)]) else {
        return;
    };
    let mut alice = browser.new_person("alice");
    let mut bob = browser.new_person("bob");
    sign_in(&mut alice, &url, "alice");
    sign_in(&mut bob, &url, "bob");
    switch_room(&mut bob, "design");
    wait_people(&mut alice, &["alice"]);

    say(&mut alice, "did you see the plan?");
    let mine = wait_message(
        &mut alice,
        "alice's message stored",
        "did you see the plan?",
        "m.sent",
    );
    let seq = seq_of(&mine);
    let alone = shown(&mut alice, &seq);
    assert_eq!(alone["status"], "✓", "{alone}");
    assert_eq!(alone["statusTitle"], "Sent", "{alone}");
    assert_eq!(alice.accessible(&li(&seq))["description"], Value::Null);

    // bob opens the room; his page reads it, and alice's message is seen by
    // everyone else in the room.
    switch_room(&mut bob, "general");
    let seen = wait_shown(&mut alice, "✓✓ for bob", &seq, "m.status === '✓✓'");
    assert_eq!(seen["statusTitle"], "Seen by bob", "{seen}");
    assert_eq!(alice.accessible(&li(&seq))["description"], "Seen by bob");
    alice.screenshot("seen-by-bob");
    let at_bob = wait_message(&mut bob, "alice's message", "did you see the plan?", "true");
    assert_eq!(at_bob["status"], "", "only the sender sees who has read it");

    // carol comes in: until she has read it, not everyone has.
    let mut carol = server.login_in("carol", "general");
    wait_people(&mut alice, &["alice", "bob", "carol"]);
    let waiting = wait_shown(&mut alice, "back to ✓", &seq, "m.status === '✓'");
    assert_eq!(
        waiting["statusTitle"], "Seen by bob; not yet by carol",
        "{waiting}"
    );
    let reply = carol.request(
        json!({"type": "read", "room": "general", "seq": seq.parse::<i64>().expect("a number")}),
    );
    assert_eq!(reply["type"], "unread", "{reply}");
    let everyone = wait_shown(&mut alice, "✓✓ for all", &seq, "m.status === '✓✓'");
    assert_eq!(everyone["statusTitle"], "Seen by bob, carol", "{everyone}");
    let described = alice.accessible(&li(&seq));
    assert_eq!(
        described["description"], "Seen by bob, carol",
        "{described}"
    );
    alice.screenshot("seen-by-everyone");

    // A reload keeps it: the marks come with joined.read_by.
    alice.reload();
    alice.wait_for("the chat after a reload", CHAT_READY);
    let again = wait_shown(&mut alice, "✓✓ after a reload", &seq, "m.status === '✓✓'");
    assert_eq!(again["statusTitle"], "Seen by bob, carol", "{again}");
    alice.assert_no_exceptions();
}

// ---- Editing -----------------------------------------------------------------------

#[test]
fn an_edit_in_place_shows_edited_in_the_other_browser() {
    let Some((mut browser, _server, url)) = set_up("edit", &[("general", 3)]) else {
        return;
    };
    let mut alice = browser.new_person("alice");
    let mut bob = browser.new_person("bob");
    alice.add_init_script(RECORD_SENDS);
    sign_in(&mut alice, &url, "alice");
    sign_in(&mut bob, &url, "bob");
    wait_people(&mut alice, &["alice", "bob"]);

    say(&mut alice, "lets meet at 10");
    let seq = seq_of(&wait_message(
        &mut alice,
        "alice's message",
        "lets meet at 10",
        "m.sent",
    ));
    wait_message(&mut bob, "alice's message", "lets meet at 10", "true");
    let theirs = shown(&mut bob, &seq);
    assert_eq!(theirs["actions"], json!([]), "only the author may edit");
    let mine = shown(&mut alice, &seq);
    assert_eq!(mine["actions"], json!(["Edit message", "Delete message"]));
    let edit = format!("{} button.msg-edit", li(&seq));
    let delete = format!("{} button.msg-delete", li(&seq));
    for (selector, name) in [(&edit, "Edit message"), (&delete, "Delete message")] {
        let node = alice.accessible(selector);
        assert_eq!(node["role"], "button", "{node}");
        assert_eq!(node["name"], name, "{node}");
    }

    // With the message focused, Tab reaches its Edit and Delete, shown.
    alice.eval(&format!(
        "document.querySelector({}).focus(); true",
        js_string(&li(&seq))
    ));
    alice.press(Key::Tab);
    assert_eq!(
        focused(&mut alice),
        "button.btn.small.ghost.msg-edit[Edit message]"
    );
    assert_eq!(
        alice.eval(&format!(
            "getComputedStyle(document.querySelector({}).parentNode).opacity",
            js_string(&edit)
        )),
        "1",
        "the buttons show while the message has focus"
    );
    alice.press(Key::Tab);
    assert_eq!(
        focused(&mut alice),
        "button.btn.small.ghost.msg-delete[Delete message]"
    );
    alice.press(Key::ShiftTab);
    alice.press(Key::Enter);
    let editing = wait_shown(&mut alice, "the editor", &seq, "m.editing");
    assert_eq!(editing["editing"], true);
    assert_eq!(
        alice.eval("document.activeElement.tagName === 'TEXTAREA' && document.activeElement.value"),
        "lets meet at 10",
        "the editor has the text and the focus"
    );
    alice.screenshot("edit-in-place");
    alice.eval("document.activeElement.select(); true");
    alice.type_text("lets meet at 11");
    alice.press(Key::Enter);
    let edited = wait_shown(
        &mut alice,
        "the edit saved",
        &seq,
        "!m.editing && m.text === 'lets meet at 11' && m.edited === '(edited)'",
    );
    assert!(
        str_of(&edited["editedTitle"]).starts_with("Edited "),
        "the edit's time is in the tooltip: {edited}"
    );
    assert_eq!(
        focused(&mut alice),
        "button.btn.small.ghost.msg-edit[Edit message]",
        "the focus is back where the edit began"
    );
    let elsewhere = wait_shown(
        &mut bob,
        "the edit in the other browser",
        &seq,
        "m.text === 'lets meet at 11' && m.edited === '(edited)'",
    );
    assert!(
        str_of(&elsewhere["editedTitle"]).starts_with("Edited "),
        "{elsewhere}"
    );
    bob.screenshot("edited-elsewhere");

    // Up in the empty message box edits the last message; Escape cancels.
    alice.click("#composer-input");
    alice.press(Key::ArrowUp);
    wait_shown(&mut alice, "the editor from the box", &seq, "m.editing");
    alice.type_text(" or 12");
    alice.press(Key::Escape);
    let cancelled = wait_shown(&mut alice, "the editor closed", &seq, "!m.editing");
    assert_eq!(cancelled["text"], "lets meet at 11", "nothing saved");
    assert_eq!(focused(&mut alice), "#composer-input");

    // Refusals are said in the page: editing someone else's message (the
    // page never offers it; the test rewrites the frame on its way).
    say(&mut bob, "bob's own words");
    let theirs = seq_of(&wait_message(
        &mut alice,
        "bob's message",
        "bob's own words",
        "true",
    ));
    alice.eval(&format!(
        "window.__rewrite = (f) => f.type === 'edit' ? Object.assign(f, {{seq: {theirs}}}) : f; true"
    ));
    alice.click("#composer-input");
    alice.press(Key::ArrowUp);
    wait_shown(&mut alice, "the editor again", &seq, "m.editing");
    alice.type_text("!");
    alice.press(Key::Enter);
    let error = alice.wait_for(
        "the refusal in the editor",
        "(document.querySelector('.msg-editor [role=\"alert\"]') || {}).textContent",
    );
    assert_eq!(error, "You can only edit your own messages.");
    alice.screenshot("edit-refused");
    // Text the server refuses, as it would in a send.
    alice.eval(
        "window.__rewrite = (f) => f.type === 'edit' ? Object.assign(f, {text: '   '}) : f; true",
    );
    alice.click(&format!("{} .msg-edit-save", li(&seq)));
    let error = alice.wait_for(
        "the second refusal in the editor",
        "(() => { const t = (document.querySelector('.msg-editor [role=\"alert\"]') || {}).textContent || '';
            return t.startsWith('That text cannot be saved: ') && t; })()",
    );
    assert!(
        str_of(&error).len() > "That text cannot be saved: ".len(),
        "{error}"
    );
    alice.press(Key::Escape);
    alice.eval("window.__rewrite = null; true");
    // The arrow keys go from message to message.
    alice.eval(&format!(
        "document.querySelector({}).focus(); true",
        js_string(&li(&seq))
    ));
    alice.press(Key::ArrowDown);
    assert_eq!(
        alice.eval("document.activeElement.dataset.seq"),
        theirs.as_str()
    );
    alice.press(Key::ArrowUp);
    assert_eq!(
        alice.eval("document.activeElement.dataset.seq"),
        seq.as_str()
    );
    assert_eq!(shown(&mut bob, &theirs)["text"], "bob's own words");
    assert_eq!(shown(&mut alice, &seq)["text"], "lets meet at 11");

    // A reload shows the edit from history.
    bob.reload();
    bob.wait_for("bob's chat after a reload", CHAT_READY);
    wait_shown(
        &mut bob,
        "the edit in history",
        &seq,
        "m.text === 'lets meet at 11' && m.edited === '(edited)'",
    );
    assert!(alice.dialogs().is_empty(), "{:?}", alice.dialogs());
    alice.assert_no_exceptions();
    bob.assert_no_exceptions();
}

// ---- Deleting ----------------------------------------------------------------------

#[test]
fn a_deleted_message_is_gone_from_every_page_at_once() {
    let Some((mut browser, server, url)) = set_up("delete", &[("general", 3)]) else {
        return;
    };
    let mut carol = server.login_in("carol", "general");
    let mut alice = browser.new_person("alice");
    let mut bob = browser.new_person("bob");
    alice.add_init_script(RECORD_SENDS);
    sign_in(&mut alice, &url, "alice");
    sign_in(&mut bob, &url, "bob");
    wait_people(&mut alice, &["alice", "bob", "carol"]);

    say(&mut alice, "oops, wrong room");
    let seq = seq_of(&wait_message(
        &mut alice,
        "alice's message",
        "oops, wrong room",
        "m.sent",
    ));
    wait_message(&mut bob, "alice's message", "oops, wrong room", "true");
    let delete = format!("{} button.msg-delete", li(&seq));

    // Asked in the page first; Escape keeps the message.
    alice.click(&delete);
    alice.wait_for(
        "the confirmation",
        "document.getElementById('msg-delete-dialog').open",
    );
    assert_eq!(alice.text("#msg-delete-quote"), "oops, wrong room");
    assert_eq!(focused(&mut alice), "#msg-delete-cancel");
    alice.screenshot("delete-confirm");
    alice.press(Key::Escape);
    alice.wait_for(
        "the confirmation closed",
        "!document.getElementById('msg-delete-dialog').open",
    );
    assert_eq!(shown(&mut alice, &seq)["text"], "oops, wrong room");
    assert_eq!(
        focused(&mut alice),
        "button.btn.small.ghost.msg-delete[Delete message]"
    );

    alice.click(&delete);
    alice.wait_for(
        "the confirmation",
        "document.getElementById('msg-delete-dialog').open",
    );
    alice.click("#msg-delete-confirm");
    for page in [&mut alice, &mut bob] {
        let gone = wait_shown(
            page,
            "the tombstone",
            &seq,
            "m.deleted && m.text === 'This message was deleted.'",
        );
        assert_eq!(gone["actions"], json!([]), "{gone}");
        assert_eq!(gone["status"], "", "{gone}");
    }
    alice.screenshot("deleted");
    bob.screenshot("deleted-elsewhere");
    let frame = carol.wait_for("message_deleted", |f| f["type"] == "message_deleted");
    assert_eq!(frame["room"], "general");
    assert_eq!(frame["seq"].to_string(), seq);

    // History keeps its place as a tombstone.
    bob.reload();
    bob.wait_for("bob's chat after a reload", CHAT_READY);
    wait_shown(
        &mut bob,
        "the tombstone from history",
        &seq,
        "m.deleted && m.text === 'This message was deleted.'",
    );

    // A page that was offline meanwhile shows what became of the messages
    // on it once it is back.
    say(&mut alice, "typo heer");
    let typo = seq_of(&wait_message(&mut alice, "a typo", "typo heer", "m.sent"));
    say(&mut alice, "never mind");
    let never = seq_of(&wait_message(&mut alice, "another", "never mind", "m.sent"));
    wait_message(&mut bob, "the typo", "typo heer", "true");
    wait_message(&mut bob, "the other", "never mind", "true");
    bob.set_offline(true);
    bob.wait_for(
        "bob offline",
        "document.getElementById('conn').dataset.state !== 'ready'",
    );
    alice.click(&format!("{} button.msg-edit", li(&typo)));
    wait_shown(&mut alice, "the editor", &typo, "m.editing");
    alice.eval("document.activeElement.select(); true");
    alice.type_text("typo here");
    alice.press(Key::Enter);
    wait_shown(&mut alice, "the edit", &typo, "m.edited === '(edited)'");
    alice.click(&format!("{} button.msg-delete", li(&never)));
    alice.wait_for(
        "the confirmation",
        "document.getElementById('msg-delete-dialog').open",
    );
    alice.click("#msg-delete-confirm");
    wait_shown(&mut alice, "the tombstone", &never, "m.deleted");
    bob.set_offline(false);
    bob.wait_for("bob back", CHAT_READY);
    wait_shown(
        &mut bob,
        "the edit made while bob was offline",
        &typo,
        "m.text === 'typo here' && m.edited === '(edited)'",
    );
    wait_shown(
        &mut bob,
        "the delete made while bob was offline",
        &never,
        "m.deleted && m.text === 'This message was deleted.'",
    );

    // A message that is gone cannot be deleted: said in the page.
    say(&mut alice, "second thoughts");
    let other = seq_of(&wait_message(
        &mut alice,
        "another message",
        "second thoughts",
        "m.sent",
    ));
    alice.eval(&format!(
        "window.__rewrite = (f) => f.type === 'delete_message' ? Object.assign(f, {{seq: {seq}}}) : f; true"
    ));
    alice.click(&format!("{} button.msg-delete", li(&other)));
    alice.wait_for(
        "the confirmation",
        "document.getElementById('msg-delete-dialog').open",
    );
    alice.click("#msg-delete-confirm");
    let alert = alice.wait_for(
        "the refusal",
        "document.getElementById('chat-alert').textContent",
    );
    assert_eq!(
        alert,
        "That message is no longer there: it was deleted, or its room was."
    );
    assert_eq!(shown(&mut alice, &other)["text"], "second thoughts");
    assert!(alice.dialogs().is_empty(), "{:?}", alice.dialogs());
    alice.assert_no_exceptions();
    bob.assert_no_exceptions();
}

// ---- Search ------------------------------------------------------------------------

/// A server whose "design" room has 200 messages with "The deploy plan for
/// Zürich is ready" in the middle, and a "general" whose newest message
/// looks like markup.
fn set_up_search(test: &str) -> Option<(Browser, TestServer, String)> {
    let browser = Browser::launch(test)?;
    let dir = TempDir::new("browser");
    seed(&dir.db(), &[("general", 5), ("design", 200)]);
    let mut store = Store::open(&dir.db()).expect("open the database");
    let now = now_ms();
    let carol = store.login_user("carol", now).expect("carol");
    let dave = store.login_user("dave", now).expect("dave");
    let rooms = store.live_rooms().expect("rooms");
    let room = |name: &str| rooms.iter().find(|r| r.name == name).expect("seeded").id;
    let special = [
        (
            room("design"),
            carol.id,
            "The deploy plan for Zürich is ready",
            now - 100 * 60_000 - 30_000,
        ),
        (
            room("general"),
            dave.id,
            "<b>deploy</b> notes & more",
            now - 30_000,
        ),
    ];
    let batch: Vec<NewMessage> = special
        .iter()
        .enumerate()
        .map(|(i, &(room_id, user_id, text, ts))| NewMessage {
            room_id,
            user_id,
            client_id: format!("special-{i}"),
            text: text.to_string(),
            ts,
            received_at: ts,
            mentions: Vec::new(),
        })
        .collect();
    store.insert_messages(&batch).expect("add messages");
    drop(store);
    let server = TestServer::start_in(dir, |c| c.room_switches_per_minute = 30);
    let url = server.url();
    Some((browser, server, url))
}

/// The search results shown: room, author and text of each, and the words
/// marked in it.
fn results(page: &mut Page) -> Vec<Value> {
    page.eval(
        "Array.from(document.querySelectorAll('#search-results > li'), (li) => ({
            tag: li.firstElementChild.tagName,
            seq: Number(li.firstElementChild.dataset.seq),
            room: li.querySelector('.result-room').textContent,
            from: li.querySelector('.result-from').textContent,
            text: li.querySelector('.result-text').textContent,
            marked: Array.from(li.querySelectorAll('mark'), (m) => m.textContent),
            elements: Array.from(li.querySelectorAll('.result-text *'), (e) => e.tagName),
        }))",
    )
    .as_array()
    .expect("an array")
    .clone()
}

/// Types `query` into the (focused) search box, replacing what is there,
/// and waits for its results.
fn search_for(page: &mut Page, query: &str) -> Vec<Value> {
    page.eval("document.getElementById('search-input').select(); true");
    page.type_text(query);
    page.wait_for(
        &format!("results for {query:?}"),
        &format!(
            "document.getElementById('search-status').textContent.endsWith('“' + {} + '”.')",
            js_string(query)
        ),
    );
    results(page)
}

/// The message with this text is on screen, lit up, focused and in view.
fn lit(text: &str) -> String {
    format!(
        "(() => {{
            const li = Array.from(document.querySelectorAll('#msg-list li.msg'))
                .find((li) => li.querySelector('.msg-text').textContent === {t});
            if (!li) return false;
            const r = li.getBoundingClientRect(), log = document.getElementById('log').getBoundingClientRect();
            return li.classList.contains('flash') && document.activeElement === li
                && r.top >= log.top && r.bottom <= log.bottom;
        }})()",
        t = js_string(text)
    )
}

#[test]
fn search_finds_words_across_rooms_and_opens_a_result_at_its_message() {
    let Some((mut browser, _server, url)) = set_up_search("search") else {
        return;
    };
    let mut alice = browser.new_person("alice");
    sign_in(&mut alice, &url, "alice");
    alice.wait_for("general on screen", &in_room("general"));

    // Ctrl+K: the search box, a textbox in the search landmark.
    alice.press(Key::CtrlK);
    alice.wait_for(
        "the search box focused",
        "document.activeElement === document.getElementById('search-input')",
    );
    let node = alice.accessible("#search-input");
    assert_eq!(node["role"], "textbox", "{node}");
    assert_eq!(node["name"], "Search messages", "{node}");
    assert_eq!(
        alice.eval("document.getElementById('search-input').closest('[role=\"search\"]') !== null"),
        true
    );

    // The last word as a prefix, without case or diacritics.
    let found = search_for(&mut alice, "PLAN zuri");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["tag"], "BUTTON");
    assert_eq!(found[0]["room"], "#design");
    assert_eq!(found[0]["from"], "carol");
    assert_eq!(found[0]["text"], "The deploy plan for Zürich is ready");
    assert_eq!(found[0]["marked"], json!(["plan", "Zürich"]));
    let list = alice.accessible("#search-results");
    assert_eq!(list["role"], "list", "{list}");
    assert_eq!(list["name"], "Search results", "{list}");
    alice.screenshot("search-results");

    // Down into the results, Enter: design opens at that message, in the
    // middle of its history, lit up.
    alice.press(Key::ArrowDown);
    assert_eq!(focused(&mut alice), "button.result-btn");
    alice.press(Key::Enter);
    alice.wait_for("design on screen", &in_room("design"));
    alice.wait_for(
        "the result lit up in view",
        &lit("The deploy plan for Zürich is ready"),
    );
    assert_eq!(
        alice.eval("document.getElementById('search-panel').hidden"),
        true
    );
    assert_eq!(
        alice.eval(
            "!document.getElementById('older-btn').hidden && !document.getElementById('newer-btn').hidden"
        ),
        true,
        "a page from the middle of the room"
    );
    alice.screenshot("search-opened");

    // Paging: "More results" asks for older ones with before_seq.
    alice.press(Key::CtrlK);
    let first = search_for(&mut alice, "design message");
    assert_eq!(first.len(), 25);
    assert!(
        alice
            .text("#search-status")
            .starts_with("25+ messages match"),
        "{}",
        alice.text("#search-status")
    );
    alice.click("#search-more");
    alice.wait_for(
        "more results",
        "document.querySelectorAll('#search-results > li').length === 50",
    );
    let all = results(&mut alice);
    let seqs: Vec<i64> = all
        .iter()
        .map(|r| r["seq"].as_i64().expect("a seq"))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first, nothing twice: {seqs:?}"
    );
    assert!(all.iter().all(|r| r["room"] == "#design"));

    // Text that looks like markup is text; only the page's <mark>s are elements.
    let deploy = search_for(&mut alice, "deploy");
    assert_eq!(deploy.len(), 2, "{deploy:?}");
    assert_eq!(deploy[0]["text"], "<b>deploy</b> notes & more");
    assert_eq!(deploy[0]["elements"], json!(["MARK"]));
    assert_eq!(deploy[0]["marked"], json!(["deploy"]));

    // Escape closes search; the focus goes back to the message it came from.
    alice.press(Key::Escape);
    alice.wait_for(
        "search closed",
        "document.getElementById('search-panel').hidden",
    );
    assert_eq!(
        alice.eval(
            "document.activeElement.matches('li.msg') \
             && document.activeElement.querySelector('.msg-text').textContent"
        ),
        "The deploy plan for Zürich is ready"
    );

    // A result in the room on screen but not on the page shown: the page
    // around it replaces it.
    alice.press(Key::CtrlK);
    let far = search_for(&mut alice, "design message 199");
    assert_eq!(far[0]["text"], "design message 199", "{far:?}");
    alice.press(Key::ArrowDown);
    alice.press(Key::Enter);
    alice.wait_for("the far message lit up", &lit("design message 199"));
    assert_eq!(
        alice.eval("document.querySelector('.room-btn[aria-current=\"true\"]').dataset.room"),
        "design"
    );

    // Tabbing out of search closes it.
    alice.press(Key::CtrlK);
    search_for(&mut alice, "design message 199");
    for _ in 0..10 {
        alice.press(Key::Tab);
        if alice.eval("document.getElementById('search-form').contains(document.activeElement)")
            == false
        {
            break;
        }
    }
    assert_eq!(
        alice.eval("document.getElementById('search-panel').hidden"),
        true,
        "the focus left search ({}) and the results closed",
        focused(&mut alice)
    );

    // A result in another room, from the general room's message.
    alice.press(Key::CtrlK);
    search_for(&mut alice, "deploy");
    alice.click("#search-results > li:first-child .result-btn");
    alice.wait_for("general on screen", &in_room("general"));
    alice.wait_for("the message lit up", &lit("<b>deploy</b> notes & more"));

    // On a phone: the Search button opens the search bar over the room.
    alice.set_viewport(PHONE.0, PHONE.1, true);
    alice.click("#search-btn");
    alice.wait_for(
        "the search bar",
        "document.activeElement === document.getElementById('search-input') \
         && document.getElementById('search-input').getBoundingClientRect().width > 200",
    );
    let found = search_for(&mut alice, "zürich");
    assert_eq!(found.len(), 1, "{found:?}");
    alice.screenshot("search-phone");
    alice.click("#search-results > li:first-child .result-btn");
    alice.wait_for("design on screen", &in_room("design"));
    alice.wait_for(
        "the result lit up on the phone",
        &lit("The deploy plan for Zürich is ready"),
    );
    assert_eq!(
        alice.eval(
            "document.getElementById('app').dataset.search === 'closed' \
             && document.getElementById('search-input').getClientRects().length === 0"
        ),
        true,
        "the search bar is gone once a result is open"
    );
    alice.screenshot("search-opened-phone");
    alice.assert_no_exceptions();
}

// ---- Accessibility -----------------------------------------------------------------

#[test]
fn axe_finds_nothing_serious_while_searching_editing_or_after_a_delete() {
    let Some((mut browser, server, url)) = set_up_with("axe11", &[("general", 6)], |_| {}) else {
        return;
    };
    let mut alice = browser.new_person("alice");
    sign_in(&mut alice, &url, "alice");
    let mut bob = server.login_in("bob", "general");
    wait_people(&mut alice, &["alice", "bob"]);
    for text in ["first draft", "to be deleted", "read by bob"] {
        say(&mut alice, text);
        wait_message(&mut alice, "alice's message", text, "m.sent");
    }
    let read = seq_of(&wait_message(
        &mut alice,
        "the last",
        "read by bob",
        "m.sent",
    ));
    bob.request(
        json!({"type": "read", "room": "general", "seq": read.parse::<i64>().expect("a number")}),
    );
    wait_shown(&mut alice, "✓✓", &read, "m.status === '✓✓'");
    bob.send_json(json!({"type": "typing"}));
    alice.wait_for(
        "bob typing",
        "document.getElementById('typing').textContent === 'bob is typing…'",
    );
    axe_everywhere(&mut alice, "seen-and-typing");

    // A deleted message.
    let gone = seq_of(&wait_message(
        &mut alice,
        "to delete",
        "to be deleted",
        "m.sent",
    ));
    alice.click(&format!("{} button.msg-delete", li(&gone)));
    alice.wait_for(
        "the confirmation",
        "document.getElementById('msg-delete-dialog').open",
    );
    axe::check_light_and_dark(&mut alice, "message-delete-confirm");
    alice.click("#msg-delete-confirm");
    wait_shown(&mut alice, "the tombstone", &gone, "m.deleted");

    // Editing, with an edited message beside it.
    let first = seq_of(&wait_message(&mut alice, "first", "first draft", "m.sent"));
    alice.click(&format!("{} button.msg-edit", li(&first)));
    wait_shown(&mut alice, "the editor", &first, "m.editing");
    alice.eval("document.activeElement.select(); true");
    alice.type_text("final draft");
    alice.press(Key::Enter);
    wait_shown(&mut alice, "edited", &first, "m.edited === '(edited)'");
    alice.click("#composer-input");
    alice.press(Key::ArrowUp);
    wait_shown(&mut alice, "the editor", &read, "m.editing");
    axe_everywhere(&mut alice, "editing-and-deleted");
    alice.press(Key::Escape);

    // Search open with results, on a desktop and on a phone.
    alice.press(Key::CtrlK);
    search_for(&mut alice, "general message");
    axe::check_light_and_dark(&mut alice, "search-results");
    alice.press(Key::Escape);
    alice.set_viewport(PHONE.0, PHONE.1, true);
    alice.click("#search-btn");
    search_for(&mut alice, "draft");
    axe::check_light_and_dark(&mut alice, "search-results-phone");
    alice.assert_no_exceptions();
}
