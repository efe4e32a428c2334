//! Issue 10, "a chat you can leave open all day", in the browser: reloads
//! and network blips that nobody else notices, unread counts and the "New
//! messages" line, mentions and notifications, links, day separators, the
//! phone layout, and axe-core in every state.

use std::time::Duration;

use parlor::store::{NewMessage, Store};
use serde_json::{Value, json};

use crate::axe;
use crate::cdp::{Browser, Key, Page, js_string};
use crate::support::{Client, TempDir, TestServer, now_ms};
use crate::{
    CHAT_READY, in_room, room_button, say, seed, set_up, set_up_with, sign_in, str_of, switch_room,
    tab_to, texts, wait_message, wait_people, wait_room_label,
};

/// A phone's viewport (the 360×740).
const PHONE: (u32, u32) = (360, 740);

/// Runs axe-core in light and in dark (the page follows the system).
fn axe_both(page: &mut Page, state: &str) {
    axe::check_light_and_dark(page, state);
}

/// The `aria-label` of `room`'s button.
fn room_label(page: &mut Page, room: &str) -> String {
    let js = format!(
        "(document.querySelector({}) || {{}}).ariaLabel || ''",
        js_string(&room_button(room))
    );
    str_of(&page.eval(&js)).to_string()
}

/// Waits until `room`'s button is named starting with `start`.
fn wait_room_label_starts(page: &mut Page, room: &str, start: &str) -> String {
    let js = format!(
        "((document.querySelector({}) || {{}}).ariaLabel || '').startsWith({})",
        js_string(&room_button(room)),
        js_string(start)
    );
    page.wait_for(&format!("room {room} labelled {start:?}…"), &js);
    room_label(page, room)
}

/// The accessible names of the separators in the message list, in order.
fn separators(page: &mut Page) -> Vec<String> {
    let value = page.eval(
        "Array.from(document.querySelectorAll('#msg-list [role=\"separator\"]'), (s) => s.getAttribute('aria-label'))",
    );
    value
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| str_of(v).to_string())
        .collect()
}

/// Every frame about `user`'s presence that `client` has received so far.
fn presence_of(client: &mut Client, user: &str) -> Vec<Value> {
    // Read what has arrived into the backlog, keeping it all.
    client.try_wait_for(Duration::from_millis(300), &|_| false);
    client
        .backlog
        .iter()
        .filter(|f| f["type"] == "presence" && f["user"] == user)
        .cloned()
        .collect()
}

/// Puts `text` in the message box at once (as a paste would) and presses Enter.
fn paste_and_send(page: &mut Page, text: &str) {
    page.eval(&format!(
        "(() => {{ const el = document.getElementById('composer-input');
            el.focus(); el.value = {}; el.dispatchEvent(new Event('input', {{bubbles: true}})); return true; }})()",
        js_string(text)
    ));
    page.press(Key::Enter);
}

// ---- Sessions survive a drop ------------------------------------------------

#[test]
fn reload_mid_conversation_resumes_unseen_and_resends_what_was_unsent() {
    // One message a second, so a burst of three leaves two waiting for an
    // ack when the page reloads.
    let Some((mut browser, server, url)) =
        set_up_with("reload", &[("general", 3), ("design", 3)], |c| {
            c.messages_per_second = 1
        })
    else {
        return;
    };
    let mut bob = server.login_in("bob", "design");
    let mut alice = browser.new_person("alice");
    sign_in(&mut alice, &url, "alice");
    switch_room(&mut alice, "design");
    wait_people(&mut alice, &["alice", "bob"]);
    bob.clear();

    let burst = ["first of three", "second of three", "third of three"];
    for text in burst {
        paste_and_send(&mut alice, text);
    }
    alice.click("#composer-input");
    alice.type_text("half a thought");
    let waiting = alice.eval("document.querySelectorAll('#msg-list li.msg.pending').length");
    assert!(
        waiting.as_u64().is_some_and(|n| n >= 1),
        "some of the burst waits for its ack before the reload: {waiting}"
    );
    alice.screenshot("reload-before");

    // Six reloads: more than the five room switches a minute allowed, so
    // none of them may count as one.
    for round in 1..=6 {
        alice.reload();
        alice.wait_for(
            &format!("the chat after reload {round}"),
            &format!("({CHAT_READY}) && {}", in_room("design")),
        );
        assert_eq!(
            alice.eval("document.getElementById('composer-input').value"),
            "half a thought",
            "the draft survives reload {round}"
        );
        wait_people(&mut alice, &["alice", "bob"]);
    }
    for text in burst {
        let m = wait_message(&mut alice, "a message of the burst acked", text, "m.sent");
        assert_eq!(m["count"], 1, "{text} shown once");
        bob.wait_for(&format!("{text} at bob's"), |f| {
            f["type"] == "message" && f["text"] == text
        });
    }
    let shown: Vec<String> = texts(&mut alice)
        .into_iter()
        .filter(|t| t.ends_with("of three"))
        .collect();
    assert_eq!(shown, burst, "in the order they were written");
    let history =
        bob.request(json!({"type": "history", "room": "design", "since_seq": 0, "limit": 50}));
    for text in burst {
        let stored = history["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["text"] == text)
            .count();
        assert_eq!(stored, 1, "{text} stored once: {history}");
    }
    assert_eq!(
        presence_of(&mut bob, "alice"),
        Vec::<Value>::new(),
        "bob never saw alice leave or come back"
    );
    alice.eval("document.getElementById('composer-input').select(); true");
    alice.type_text("still here");
    alice.press(Key::Enter);
    bob.wait_for("alice's message after the reloads", |f| {
        f["type"] == "message" && f["text"] == "still here"
    });
    alice.screenshot("reload-after");

    // Signing out ends the session at once: bob sees alice leave, and the
    // token no longer resumes anything.
    alice.click("#signout-btn");
    alice.wait_for(
        "the sign-in form",
        "document.getElementById('app').dataset.view === 'signin'",
    );
    bob.wait_for("alice leaving on sign-out", |f| {
        f["type"] == "presence" && f["user"] == "alice" && f["state"] == "left"
    });
    assert_eq!(
        alice.eval("sessionStorage.getItem('parlor.session')"),
        Value::Null
    );
    alice.assert_no_exceptions();
}

#[test]
fn a_room_the_server_will_not_let_us_back_into_is_not_shown() {
    // Two switches a minute: signing in (general) and design use them up.
    let Some((mut browser, _server, url)) =
        set_up_with("rejoin", &[("general", 2), ("design", 2)], |c| {
            c.room_switches_per_minute = 2
        })
    else {
        return;
    };
    let mut alice = browser.new_person("alice");
    sign_in(&mut alice, &url, "alice");
    switch_room(&mut alice, "design");
    // Signed out and in again, the page goes to the room this browser
    // remembers, here general (as another tab would have left it): a third
    // switch, one too many. (Going back to design would be free: it is
    // where alice was.)
    alice.click("#signout-btn");
    alice.wait_for(
        "the sign-in form",
        "document.getElementById('app').dataset.view === 'signin' \
         && !document.getElementById('signin-btn').disabled",
    );
    alice.eval("localStorage.setItem('parlor.room', 'general'); true");
    alice.click("#signin-btn");
    let alert = alice.wait_for(
        "the reason shown",
        "document.getElementById('conn').dataset.state === 'ready' \
         && document.getElementById('chat-alert').textContent",
    );
    let alert = str_of(&alert).to_string();
    assert!(
        alert.contains("“general”") && alert.contains("Trying again in"),
        "{alert}"
    );
    assert_eq!(
        alice.eval(
            "[document.getElementById('room-title').textContent,
              document.querySelectorAll('.room-btn[aria-current]').length,
              document.getElementById('composer-input').disabled,
              document.querySelectorAll('#msg-list li').length]"
        ),
        json!(["No room", 0, true, 0]),
        "no room is shown while the server has us in none"
    );
    alice.screenshot("rejoin-refused");
    axe::check(&mut alice, "rejoin-refused");
    alice.assert_no_exceptions();
}

#[test]
fn five_network_blips_in_a_row_leave_the_page_in_its_room() {
    let Some((mut browser, server, url)) = set_up("blips", &[("general", 5)]) else {
        return;
    };
    let mut bob = server.login_in("bob", "general");
    let mut alice = browser.new_person("alice");
    sign_in(&mut alice, &url, "alice");
    wait_people(&mut alice, &["alice", "bob"]);
    bob.clear();

    for blip in 1..=5 {
        alice.set_offline(true);
        alice.wait_for(
            &format!("blip {blip} noticed"),
            "document.getElementById('conn').dataset.state !== 'ready'",
        );
        if blip == 1 {
            alice.screenshot("blip-reconnecting");
        }
        alice.set_offline(false);
        alice.wait_for(
            &format!("back after blip {blip}"),
            &format!("({CHAT_READY}) && {}", in_room("general")),
        );
        let text = format!("said after blip {blip}");
        let ack = bob.say(&format!("blip-{blip}"), &text);
        assert_eq!(ack["type"], "ack", "{ack}");
        wait_message(&mut alice, "bob's message after the blip", &text, "true");
    }
    wait_people(&mut alice, &["alice", "bob"]);
    assert_eq!(
        alice.text("#room-sub"),
        "2 people here",
        "the header agrees with the list"
    );
    say(&mut alice, "I never left");
    bob.wait_for("alice's message after five blips", |f| {
        f["type"] == "message" && f["text"] == "I never left"
    });
    wait_message(
        &mut alice,
        "alice's message acked",
        "I never left",
        "m.sent",
    );
    assert_eq!(
        presence_of(&mut bob, "alice"),
        Vec::<Value>::new(),
        "bob never saw alice leave or come back"
    );
    alice.assert_no_exceptions();
}

// ---- Sending ----------------------------------------------------------------------

#[test]
fn checkmarks_come_in_the_order_messages_were_written_and_the_too_quickly_warning_goes() {
    // Two messages a second: a burst of six is mostly refused at first and
    // acked as the server lets each retry through, in whatever order.
    let Some((mut browser, _server, url)) =
        set_up_with("burst", &[], |c| c.messages_per_second = 2)
    else {
        return;
    };
    let mut alice = browser.new_person("alice");
    sign_in(&mut alice, &url, "alice");
    // Record the order in which messages first show ✓.
    alice.eval(
        "window.__ticks = [];
         new MutationObserver(() => {
             for (const li of document.querySelectorAll('#msg-list li.msg.sent')) {
                 const text = li.querySelector('.msg-text').textContent;
                 if (!window.__ticks.includes(text)) window.__ticks.push(text);
             }
         }).observe(document.getElementById('msg-list'),
             {subtree: true, childList: true, attributes: true, characterData: true});
         true",
    );
    let burst: Vec<String> = (1..=6).map(|i| format!("burst {i}")).collect();
    for text in &burst {
        paste_and_send(&mut alice, text);
    }
    let warning = alice.wait_for(
        "the too-quickly warning",
        "document.getElementById('chat-alert').textContent.includes('too quickly') \
         && document.getElementById('chat-alert').textContent",
    );
    assert!(str_of(&warning).contains("will go out"), "{warning}");
    alice.screenshot("burst-sending");
    for text in &burst {
        wait_message(&mut alice, "a message of the burst acked", text, "m.sent");
    }
    let ticks: Vec<String> = alice
        .eval("window.__ticks")
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| str_of(v).to_string())
        .collect();
    assert_eq!(ticks, burst, "✓ appeared in the order written");
    alice.wait_for(
        "the warning gone once everything is sent",
        "document.getElementById('chat-alert').textContent === ''",
    );
    // ✓ sits right after the time (or after the text, in a folded group).
    let gaps = alice.eval(
        "Array.from(document.querySelectorAll('#msg-list li.msg.sent')).map((li) => {
            const status = li.querySelector('.msg-status').getBoundingClientRect();
            const before = li.classList.contains('grouped') ? li.querySelector('.msg-text') : li.querySelector('.msg-time');
            return Math.round(status.left - before.getBoundingClientRect().right);
        })",
    );
    for gap in gaps.as_array().expect("an array") {
        let gap = gap.as_i64().expect("a number");
        assert!((0..=16).contains(&gap), "✓ is next to its message: {gaps}");
    }
    alice.screenshot("burst-sent");
    alice.assert_no_exceptions();
}

// ---- Unread counts, the "New messages" line, mentions ------------------------

#[test]
fn unread_badge_and_bold_room_when_someone_writes_elsewhere_cleared_on_opening() {
    let Some((mut browser, server, url)) = set_up("unread", &[("general", 2), ("design", 2)])
    else {
        return;
    };
    let mut alice = browser.new_person("alice");
    sign_in(&mut alice, &url, "alice");
    assert_eq!(room_label(&mut alice, "design"), "design, 0 people");
    let mut bob = server.login_in("bob", "design");
    bob.say("u-1", "design news");
    bob.say("u-2", "a question for @alice here");

    wait_room_label_starts(&mut alice, "design", "design, 2 unread, 1 mention");
    wait_room_label(
        &mut alice,
        "design",
        "design, 2 unread, 1 mention, 1 person",
    );
    let looks = alice.eval(&format!(
        "(() => {{ const b = document.querySelector({});
            return {{bold: Number(getComputedStyle(b).fontWeight) >= 700,
                     mentions: b.querySelector('.room-mention').dataset.count || null,
                     shown: b.textContent}}; }})()",
        js_string(&room_button("design"))
    ));
    assert_eq!(looks["bold"], true, "{looks}");
    assert_eq!(looks["mentions"], "1", "a distinct mention badge: {looks}");
    assert_eq!(
        looks["shown"], "#design",
        "the visible text is the room's name; counts are drawn: {looks}"
    );
    assert_eq!(
        room_label(&mut alice, "general"),
        "general, 1 person",
        "nothing unread where alice is"
    );
    alice.wait_for(
        "the unread count in the title",
        "document.title.startsWith('(2) ')",
    );
    alice.screenshot("unread-badges");
    axe_both(&mut alice, "unread-badges");

    switch_room(&mut alice, "design");
    assert_eq!(
        separators(&mut alice),
        ["Today", "New messages"],
        "the line sits above bob's first unread message"
    );
    let first_unread = alice.eval(
        "(() => { const sep = document.querySelector('#msg-list .sep-row.new');
            return sep && sep.nextElementSibling.querySelector('.msg-text').textContent; })()",
    );
    assert_eq!(first_unread, "design news");
    wait_room_label_starts(&mut alice, "design", "design, 2 people");
    alice.wait_for(
        "the title without a count",
        "!document.title.startsWith('(')",
    );
    let mention = wait_message(
        &mut alice,
        "the mention",
        "a question for @alice here",
        "true",
    );
    assert_eq!(mention["from"], "bob");

    // Read marks are kept: back in general and home again, design is read.
    switch_room(&mut alice, "general");
    wait_room_label(&mut alice, "design", "design, 1 person");
    alice.reload();
    alice.wait_for("the chat after the reload", CHAT_READY);
    wait_room_label_starts(&mut alice, "design", "design, 1 person");
    alice.assert_no_exceptions();
}

#[test]
fn new_messages_line_marks_what_came_while_away() {
    let Some((mut browser, server, url)) = set_up("divider", &[("general", 4), ("design", 1)])
    else {
        return;
    };
    let mut bob = server.login_in("bob", "general");
    let mut alice = browser.new_person("alice");
    sign_in(&mut alice, &url, "alice");
    say(&mut alice, "read up to here");
    wait_message(
        &mut alice,
        "alice's message acked",
        "read up to here",
        "m.sent",
    );
    assert_eq!(separators(&mut alice), ["Today"], "nothing new on arrival");

    switch_room(&mut alice, "design");
    let mut away = Vec::new();
    for i in 1..=4 {
        away.push(
            bob.say(&format!("away-{i}"), &format!("while you were away {i}"))["seq"].clone(),
        );
    }
    wait_room_label_starts(&mut alice, "general", "general, 4 unread");
    // Taken back before she saw it: no longer unread.
    let deleted = bob.request(json!({"type": "delete_message", "seq": away[3]}));
    assert_eq!(deleted["type"], "message_deleted", "{deleted}");
    wait_room_label_starts(&mut alice, "general", "general, 3 unread");
    switch_room(&mut alice, "general");
    assert_eq!(separators(&mut alice), ["Today", "New messages"]);
    let after_line = alice.eval(
        "(() => { const sep = document.querySelector('#msg-list .sep-row.new');
            return sep.nextElementSibling.querySelector('.msg-text').textContent; })()",
    );
    assert_eq!(after_line, "while you were away 1");
    let line = alice.accessible("#msg-list .sep-row.new [role=separator]");
    assert_eq!(line["role"], "separator", "{line}");
    assert_eq!(line["name"], "New messages", "{line}");
    alice.screenshot("new-messages-line");

    // While the window is in the background the line marks the first
    // message that came meanwhile, and the title counts it.
    alice.click(&room_button("design"));
    alice.wait_for("design on screen", &in_room("design"));
    alice.set_hidden(true);
    bob.join("design");
    bob.say("bg-1", "written while alice looked elsewhere");
    let taken_back = bob.say("bg-2", "and this, @alice, better not")["seq"].clone();
    wait_message(
        &mut alice,
        "the message in the background",
        "and this, @alice, better not",
        "true",
    );
    assert_eq!(separators(&mut alice), ["Today", "New messages"]);
    alice.wait_for(
        "the title counting both",
        "document.title.startsWith('(2) #design')",
    );
    // Deleted while she looked elsewhere: the title counts one again.
    let deleted = bob.request(json!({"type": "delete_message", "seq": taken_back}));
    assert_eq!(deleted["type"], "message_deleted", "{deleted}");
    alice.wait_for(
        "the title counting it",
        "document.title.startsWith('(1) #design')",
    );
    alice.set_hidden(false);
    alice.wait_for(
        "the title without a count",
        "document.title === '#design · Parlor'",
    );
    alice.assert_no_exceptions();
}

/// Records every notification the page makes (Chromium headless shows
/// none), keeping the object so a test can click it, and whether the page
/// closed it.
const RECORD_NOTIFICATIONS: &str = "
    window.__notes = [];
    const Real = window.Notification;
    if (Real) {
        const Recording = function (title, options) {
            const n = new Real(title, options);
            const note = { title, body: options && options.body, n, closed: false };
            const close = n.close.bind(n);
            n.close = () => { note.closed = true; close(); };
            window.__notes.push(note);
            return n;
        };
        Object.defineProperty(Recording, 'permission', { get: () => Real.permission });
        Recording.requestPermission = (...args) => Real.requestPermission(...args);
        Recording.prototype = Real.prototype;
        window.Notification = Recording;
    }";

fn notifications(page: &mut Page) -> Vec<(String, String)> {
    page.eval("window.__notes.map((n) => [n.title, n.body || ''])")
        .as_array()
        .expect("an array")
        .iter()
        .map(|pair| (str_of(&pair[0]).to_string(), str_of(&pair[1]).to_string()))
        .collect()
}

#[test]
fn typing_at_offers_the_rooms_members_by_keyboard() {
    let Some((mut browser, server, url)) = set_up("complete", &[]) else {
        return;
    };
    let _carol = server.login_in("carol", "general");
    let _cleo = server.login_in("Cleo", "general");
    let mut bob = browser.new_person("bob");
    sign_in(&mut bob, &url, "bob");
    wait_people(&mut bob, &["bob", "carol", "Cleo"]);

    bob.click("#composer-input");
    bob.type_text("hi @");
    let options = "Array.from(document.querySelectorAll('#mention-list [role=option]'), (o) => o.textContent + (o.getAttribute('aria-selected') === 'true' ? '*' : ''))";
    bob.wait_for(
        "everyone else offered",
        "!document.getElementById('mention-list').hidden",
    );
    assert_eq!(bob.eval(options), json!(["carol*", "Cleo"]));
    bob.type_text("c");
    assert_eq!(bob.eval(options), json!(["carol*", "Cleo"]));
    bob.type_text("l");
    assert_eq!(bob.eval(options), json!(["Cleo*"]), "filtered as typed");
    bob.press(Key::Escape);
    assert_eq!(
        bob.eval("document.getElementById('mention-list').hidden"),
        true
    );
    assert_eq!(
        bob.eval("document.getElementById('composer-input').value"),
        "hi @cl",
        "Escape closes the list and keeps the text"
    );

    bob.eval("document.getElementById('composer-input').value = ''; true");
    bob.type_text("@");
    bob.press(Key::ArrowDown);
    assert_eq!(bob.eval(options), json!(["carol", "Cleo*"]));
    let active = bob.eval(
        "document.getElementById(document.getElementById('composer-input').getAttribute('aria-activedescendant')).textContent",
    );
    assert_eq!(active, "Cleo", "the highlighted name is the active option");
    bob.screenshot("mention-list");
    axe::check(&mut bob, "mention-list");
    bob.press(Key::ArrowUp);
    bob.press(Key::Enter);
    assert_eq!(
        bob.eval("document.getElementById('composer-input').value"),
        "@carol ",
        "Enter picks the name instead of sending"
    );
    bob.type_text("and @Cl");
    bob.press(Key::Tab);
    assert_eq!(
        bob.eval("document.getElementById('composer-input').value"),
        "@carol and @Cleo ",
        "Tab picks too"
    );
    assert_eq!(
        bob.eval("document.activeElement.id"),
        "composer-input",
        "Tab did not move on"
    );
    bob.press(Key::Enter);
    wait_message(&mut bob, "the message sent", "@carol and @Cleo ", "m.sent");
    bob.assert_no_exceptions();
}

#[test]
fn a_mention_is_highlighted_and_notified_and_the_notification_opens_its_room() {
    let Some((mut browser, server, url)) = set_up("mention", &[("design", 1)]) else {
        return;
    };
    let mut alice = browser.new_person("alice");
    alice.add_init_script(RECORD_NOTIFICATIONS);
    let origin = url.trim_end_matches('/').to_string();
    browser.grant_notifications(&alice, &origin);
    sign_in(&mut alice, &url, "alice");
    assert_eq!(alice.text("#notify-btn"), "Enable notifications");
    alice.click("#notify-btn");
    alice.wait_for(
        "notifications on",
        "document.getElementById('notify-btn').textContent === 'Disable notifications'",
    );
    assert_eq!(
        alice.eval("localStorage.getItem('parlor.notifications')"),
        "on"
    );

    let mut bob = server.login_in("bob", "general");
    bob.say("m-1", "no mention here");
    bob.say("m-2", "@alice look at this");
    let mention = wait_message(&mut alice, "the mention", "@alice look at this", "true");
    let plain = wait_message(&mut alice, "the other message", "no mention here", "true");
    let highlight = |page: &mut Page, text: &str| {
        page.eval(&format!(
            "(() => {{ const li = Array.from(document.querySelectorAll('#msg-list li.msg'))
                .find((li) => li.querySelector('.msg-text').textContent === {});
                return [li.classList.contains('mention'), li.querySelector('.msg-text .at') ? li.querySelector('.msg-text .at').textContent : null]; }})()",
            js_string(text)
        ))
    };
    assert_eq!(
        highlight(&mut alice, "@alice look at this"),
        json!([true, "@alice"])
    );
    assert_eq!(
        highlight(&mut alice, "no mention here"),
        json!([false, null])
    );
    let ax = alice.accessible(&format!(
        "#msg-list li.msg[data-seq=\"{}\"]",
        str_of(&mention["seq"])
    ));
    assert_eq!(ax["description"], "Mentions you", "{ax}");
    let ax = alice.accessible(&format!(
        "#msg-list li.msg[data-seq=\"{}\"]",
        str_of(&plain["seq"])
    ));
    assert_ne!(ax["description"], "Mentions you", "{ax}");
    alice.wait_for("a notification", "window.__notes.length === 1");
    assert_eq!(
        notifications(&mut alice),
        [(
            "bob mentioned you in #general".to_string(),
            "@alice look at this".to_string()
        )]
    );
    alice.screenshot("mention-highlighted");
    axe_both(&mut alice, "mention");

    // Bob takes back the mention, and another at once: the notification
    // showing the first closes, and the second (waiting, as general was
    // told of something less than 10 s ago) is never told.
    let wrong = bob.say("m-2b", "@alice wrong window, sorry");
    wait_message(
        &mut alice,
        "the second mention",
        "@alice wrong window, sorry",
        "true",
    );
    let mentioned: i64 = str_of(&mention["seq"]).parse().expect("a seq");
    for seq in [json!(mentioned), wrong["seq"].clone()] {
        let deleted = bob.request(json!({"type": "delete_message", "seq": seq}));
        assert_eq!(deleted["type"], "message_deleted", "{deleted}");
    }
    alice.wait_for(
        "the notification showing it closed",
        "window.__notes[0].closed === true",
    );

    // A mention in another room: one notification, then the rest counted
    // into the next one (one per room per 10 s).
    let mut carol = server.login_in("carol", "design");
    carol.say("c-1", "@alice over here");
    alice.wait_for("the design notification", "window.__notes.length === 2");
    assert_eq!(
        notifications(&mut alice)[1],
        (
            "1 new message in #design (1 mention)".to_string(),
            "Someone mentioned you.".to_string()
        )
    );
    carol.say("c-2", "@alice and again");
    carol.say("c-3", "@alice and once more");
    // While the page is in the background, the room's other messages are
    // told too.
    alice.set_hidden(true);
    bob.say("m-3", "nothing for alice in particular");
    alice.wait_for_within(
        Duration::from_secs(25),
        "the next notifications, 10 s after each room's last",
        "window.__notes.length === 4",
    );
    let later = notifications(&mut alice).split_off(2);
    assert!(
        !notifications(&mut alice)
            .iter()
            .any(|(_, body)| body.contains("wrong window")),
        "deleted text was told: {later:?}"
    );
    assert!(
        later.contains(&(
            "2 new messages in #design (2 mentions)".to_string(),
            "Someone mentioned you.".to_string()
        )),
        "{later:?}"
    );
    assert!(
        later.contains(&(
            "bob in #general".to_string(),
            "nothing for alice in particular".to_string()
        )),
        "{later:?}"
    );
    // Clicking the one for design opens design.
    alice.eval(
        "window.__notes.find((n) => n.title.includes('#design') && n.title.startsWith('2'))
            .n.dispatchEvent(new Event('click')); true",
    );
    alice.wait_for("design opened by the notification", &in_room("design"));
    alice.set_hidden(false);

    // Off again, remembered.
    alice.click("#notify-btn");
    alice.wait_for(
        "notifications off",
        "document.getElementById('notify-btn').textContent === 'Enable notifications'",
    );
    assert_eq!(
        alice.eval("localStorage.getItem('parlor.notifications')"),
        Value::Null
    );
    alice.assert_no_exceptions();
}

// ---- Reading ---------------------------------------------------------------------

#[test]
fn links_are_clickable_and_no_other_scheme_ever_is_one() {
    let Some((mut browser, server, url)) = set_up("links", &[]) else {
        return;
    };
    let mut alice = browser.new_person("alice");
    sign_in(&mut alice, &url, "alice");
    let mut bob = server.login_in("bob", "general");
    let cases = [
        "see https://example.com/path?q=1&x=2.",
        "(about https://en.wikipedia.org/wiki/Rust_(programming_language)), fine",
        "local http://127.0.0.1:8080/x, and more!",
        "javascript:alert(document.domain) and JaVaScRiPt:alert(1)",
        "data:text/html,<script>alert(1)</script> ftp://example.com/file mailto:a@example.com",
        "<a href=\"javascript:alert(1)\">click</a> www.example.com",
        "nohttps://example.com/ is not one either",
    ];
    for (i, text) in cases.iter().enumerate() {
        bob.say(&format!("l-{i}"), text);
    }
    for text in cases {
        wait_message(&mut alice, "a message with addresses", text, "true");
    }
    let links = alice.eval(
        "Array.from(document.querySelectorAll('#msg-list a'), (a) =>
            [a.textContent, a.getAttribute('href'), a.target, a.rel])",
    );
    let link = |text: &str, href: &str| json!([text, href, "_blank", "noopener noreferrer"]);
    assert_eq!(
        links,
        json!([
            link(
                "https://example.com/path?q=1&x=2",
                "https://example.com/path?q=1&x=2"
            ),
            link(
                "https://en.wikipedia.org/wiki/Rust_(programming_language)",
                "https://en.wikipedia.org/wiki/Rust_(programming_language)"
            ),
            link("http://127.0.0.1:8080/x", "http://127.0.0.1:8080/x"),
        ]),
        "only http and https addresses, without trailing punctuation"
    );
    // The text around them is still all there, as typed.
    for text in cases {
        wait_message(&mut alice, "the text intact", text, "true");
    }
    // A real click reaches the link (nothing covers it); the navigation is
    // stopped so the test stays on the page.
    alice.eval(
        "window.__clicked = null;
         document.addEventListener('click', (e) => {
             const a = e.target.closest('a');
             if (a) { window.__clicked = a.href; e.preventDefault(); }
         }, true); true",
    );
    alice.click("#msg-list a[href^=\"https://example.com/\"]");
    assert_eq!(
        alice.eval("window.__clicked"),
        "https://example.com/path?q=1&x=2"
    );
    let ax = alice.accessible("#msg-list a[href^=\"http://127.0.0.1\"]");
    assert_eq!(ax["role"], "link", "{ax}");
    assert_eq!(ax["name"], "http://127.0.0.1:8080/x", "{ax}");
    alice.screenshot("links");
    alice.assert_no_exceptions();
}

/// (year, month 1–12, day, weekday 0 = Sunday) of a UTC time in ms.
fn civil(ms: i64) -> (i64, usize, i64, usize) {
    let days = ms.div_euclid(86_400_000);
    let weekday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as usize, day, weekday)
}

/// The separator the issue asks for above a message written at `ts`, seen
/// at `now` (both UTC).
fn day_label(ts: i64, now: i64) -> String {
    const WEEKDAYS: [&str; 7] = [
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
    ];
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let day = ts.div_euclid(86_400_000);
    let today = now.div_euclid(86_400_000);
    if day == today {
        return "Today".into();
    }
    if day == today - 1 {
        return "Yesterday".into();
    }
    let (year, month, date, weekday) = civil(ts);
    let label = format!("{}, {} {date}", WEEKDAYS[weekday], MONTHS[month - 1]);
    if year == civil(now).0 {
        label
    } else {
        format!("{label}, {year}")
    }
}

#[test]
fn day_separators_name_each_day_and_times_carry_the_full_date() {
    let Some(mut browser) = Browser::launch("days") else {
        return;
    };
    let dir = TempDir::new("browser");
    seed(&dir.db(), &[("general", 0)]);
    let now = now_ms();
    const DAY: i64 = 86_400_000;
    // 2020-11-23 12:00 UTC was a Monday.
    let monday_2020 = 1_606_132_800_000;
    let written = [
        ("old-1", monday_2020, "from long ago"),
        ("old-2", monday_2020 + 60_000, "still long ago"),
        ("days-ago", now - 3 * DAY, "three days back"),
        ("yesterday", now - DAY, "yesterday's"),
        ("today", now - 1_000, "today's"),
    ];
    {
        let mut store = Store::open(&dir.db()).expect("open the database");
        let general = store.live_rooms().expect("list rooms")[0].id;
        let carol = store.login_user("carol", now).expect("carol");
        let batch: Vec<NewMessage> = written
            .iter()
            .map(|&(id, ts, text)| NewMessage {
                room_id: general,
                user_id: carol.id,
                client_id: id.into(),
                text: text.into(),
                ts,
                received_at: now,
                mentions: Vec::new(),
            })
            .collect();
        store.insert_messages(&batch).expect("add the messages");
    }
    let server = TestServer::start_in(dir, |_| {});
    let url = server.url();
    let mut alice = browser.new_person("alice");
    alice.set_timezone("UTC");
    sign_in(&mut alice, &url, "alice");
    wait_message(&mut alice, "today's message", "today's", "true");

    let seen_at = now_ms();
    let expected: Vec<String> = [monday_2020, now - 3 * DAY, now - DAY, now - 1_000]
        .into_iter()
        .map(|ts| day_label(ts, seen_at))
        .collect();
    assert_eq!(expected[0], "Monday, November 23, 2020");
    assert_eq!(separators(&mut alice), expected);
    // Each separator is named by its text.
    alice.eval(
        "document.querySelectorAll('#msg-list [role=separator]').forEach((s, i) => { s.dataset.nth = i; }); true",
    );
    for (i, label) in expected.iter().enumerate() {
        let ax = alice.accessible(&format!("#msg-list [role=separator][data-nth=\"{i}\"]"));
        assert_eq!(ax["role"], "separator", "{ax}");
        assert_eq!(&ax["name"], label, "{ax}");
    }
    // Times are a <time> with the machine-readable instant and the full
    // date in the tooltip; the list itself shows the time of day only.
    let time = alice.eval(
        "(() => { const t = Array.from(document.querySelectorAll('#msg-list li.msg'))
            .find((li) => li.querySelector('.msg-text').textContent === 'from long ago')
            .querySelector('time');
            return [t.getAttribute('datetime'), t.title, t.textContent]; })()",
    );
    assert_eq!(time[0], "2020-11-23T12:00:00.000Z", "{time}");
    assert!(
        str_of(&time[1]).contains("2020") && str_of(&time[1]).contains("November"),
        "{time}"
    );
    assert!(!str_of(&time[2]).contains("2020"), "{time}");
    // Two messages a minute apart on one day share a header.
    let still = wait_message(&mut alice, "the second old one", "still long ago", "true");
    let grouped = alice.eval(&format!(
        "document.querySelector('#msg-list li.msg[data-seq=\"{}\"]').classList.contains('grouped')",
        str_of(&still["seq"])
    ));
    assert_eq!(grouped, true);
    alice.screenshot("day-separators");
    alice.assert_no_exceptions();
}

// ---- Phones --------------------------------------------------------------------

/// The page fits the window: nothing to scroll sideways or as a whole.
fn assert_fits(page: &mut Page, state: &str) {
    let size = page.eval(
        "[document.documentElement.scrollWidth - window.innerWidth,
          document.documentElement.scrollHeight - window.innerHeight]",
    );
    assert_eq!(size, json!([0, 0]), "{state}: the page itself scrolls");
}

/// Where the composer and the newest message are, and the header's height.
fn phone_layout(page: &mut Page) -> Value {
    page.eval(
        "(() => {
            const rect = (el) => el.getBoundingClientRect();
            const items = document.querySelectorAll('#msg-list li.msg');
            const last = items[items.length - 1];
            return {
                head: rect(document.querySelector('.room-head')).height,
                composerTop: rect(document.getElementById('composer')).top,
                composerBottom: rect(document.getElementById('composer')).bottom,
                lastBottom: last ? rect(last).bottom : null,
                logHeight: rect(document.getElementById('log')).height,
                height: window.innerHeight,
            };
        })()",
    )
}

#[test]
fn on_a_phone_one_header_drawers_for_rooms_and_people_and_a_pinned_message_box() {
    let long = "A room with a rather long name for a phone";
    let Some((mut browser, _server, url)) =
        set_up("phone", &[("general", 40), ("random", 3), (long, 60)])
    else {
        return;
    };
    let mut alice = browser.new_person("alice");
    alice.set_viewport(PHONE.0, PHONE.1, true);
    sign_in(&mut alice, &url, "alice");
    assert_fits(&mut alice, "in general");
    let layout = phone_layout(&mut alice);
    let f = |key: &str| layout[key].as_f64().expect("a number");
    assert!(f("head") <= 100.0, "one compact header: {layout}");
    assert!(
        (f("composerBottom") - f("height")).abs() <= 1.0,
        "the message box is at the bottom: {layout}"
    );
    assert!(
        f("lastBottom") <= f("composerTop") + 1.0,
        "the newest message is above the message box: {layout}"
    );
    assert!(
        f("logHeight") >= f("height") * 0.6,
        "the messages fill the rest: {layout}"
    );
    let shown = alice.eval(
        "['#rooms-btn', '#people-btn', '#room-title', '#conn-mini'].map((s) => {
            const r = document.querySelector(s).getBoundingClientRect();
            return r.width > 0 && r.top >= 0 && r.bottom <= 110;
        })",
    );
    assert_eq!(
        shown,
        json!([true, true, true, true]),
        "Rooms, People, the room's name and the connection in the header"
    );
    assert_eq!(
        alice.eval("getComputedStyle(document.getElementById('sidebar')).display"),
        "none"
    );
    alice.screenshot("phone-room");
    axe_both(&mut alice, "phone-room");

    // Rooms: a drawer, opened and closed by keyboard too.
    tab_to(&mut alice, "#rooms-btn", true);
    alice.press(Key::Enter);
    alice.wait_for(
        "the rooms drawer",
        "document.getElementById('rooms-btn').getAttribute('aria-expanded') === 'true' \
         && document.activeElement.matches('.room-btn[aria-current=\"true\"]')",
    );
    assert_fits(&mut alice, "rooms drawer");
    alice.screenshot("phone-rooms-drawer");
    axe_both(&mut alice, "phone-rooms-drawer");
    alice.press(Key::Escape);
    alice.wait_for(
        "the drawer closed, focus back on its button",
        "document.getElementById('rooms-btn').getAttribute('aria-expanded') === 'false' \
         && document.activeElement.id === 'rooms-btn'",
    );
    alice.click("#rooms-btn");
    alice.click(&room_button(long));
    alice.wait_for("the long room on screen", &in_room(long));
    alice.wait_for(
        "the drawer closed after picking",
        "getComputedStyle(document.getElementById('sidebar')).display === 'none'",
    );
    assert_fits(&mut alice, "in the long room");
    let layout = phone_layout(&mut alice);
    assert!(
        layout["lastBottom"].as_f64().expect("a number")
            <= layout["composerTop"].as_f64().expect("a number") + 1.0,
        "the newest message is not behind the message box: {layout}"
    );
    alice.screenshot("phone-long-room");

    // People: the other drawer.
    alice.click("#people-btn");
    alice.wait_for(
        "the people drawer",
        "document.getElementById('people-btn').getAttribute('aria-expanded') === 'true' \
         && getComputedStyle(document.getElementById('people')).display !== 'none'",
    );
    let alice_listed = alice.eval(
        "document.querySelector('#people-list li.person[data-user=\"alice\"]').getBoundingClientRect().width > 0",
    );
    assert_eq!(alice_listed, true);
    alice.screenshot("phone-people-drawer");
    axe_both(&mut alice, "phone-people-drawer");
    alice.click("#people-close");
    alice.wait_for(
        "the people drawer closed",
        "getComputedStyle(document.getElementById('people')).display === 'none'",
    );

    // Everything else stays reachable: the page size, leaving.
    tab_to(&mut alice, "#page-size", false);
    tab_to(&mut alice, "#leave-btn", false);
    say(&mut alice, "typed on a phone");
    wait_message(
        &mut alice,
        "the phone's message",
        "typed on a phone",
        "m.sent",
    );
    assert_fits(&mut alice, "after sending");
    alice.assert_no_exceptions();
}

#[test]
fn offline_a_failed_message_stays_readable_on_a_phone_and_goes_out_once_back() {
    let Some((mut browser, server, url)) = set_up("offline", &[("general", 3)]) else {
        return;
    };
    let _bob = server.login_in("bob", "general");
    let mut alice = browser.new_person("alice");
    alice.set_viewport(PHONE.0, PHONE.1, true);
    sign_in(&mut alice, &url, "alice");
    wait_people(&mut alice, &["alice", "bob"]);

    alice.set_offline(true);
    alice.wait_for(
        "the banner",
        "!document.getElementById('conn-banner').hidden \
         && document.getElementById('conn').dataset.state === 'reconnecting'",
    );
    let text =
        "Written in a tunnel with no signal at all, long enough to need a few lines on a phone";
    say(&mut alice, text);
    // The page tries five times (about 15 s), then says it is offline.
    alice.wait_for_within(
        Duration::from_secs(30),
        "offline",
        "document.getElementById('conn').dataset.state === 'offline'",
    );
    assert!(alice.text("#conn").contains("offline"));
    assert!(
        alice.text("#conn-banner-text").contains("You are offline"),
        "{}",
        alice.text("#conn-banner-text")
    );
    let failed = wait_message(&mut alice, "the failed message", text, "m.failed");
    assert!(
        str_of(&failed["status"]).contains("Could not send"),
        "{failed}"
    );
    let layout = alice.eval(&format!(
        "(() => {{
            const li = Array.from(document.querySelectorAll('#msg-list li.msg'))
                .find((li) => li.querySelector('.msg-text').textContent === {t});
            const text = li.querySelector('.msg-text').getBoundingClientRect();
            const status = li.querySelector('.msg-status').getBoundingClientRect();
            const retry = li.querySelector('.msg-retry');
            const r = retry.getBoundingClientRect();
            const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
            const banner = document.getElementById('reconnect-btn').getBoundingClientRect();
            return {{
                textWidth: text.width, textHeight: text.height,
                statusOwnLine: status.top >= text.bottom - 1 || status.bottom <= text.top + 1,
                retryInView: r.left >= 0 && r.right <= window.innerWidth,
                retryReachable: hit === retry || retry.contains(hit),
                reconnectInView: banner.width > 0 && banner.right <= window.innerWidth,
            }};
        }})()",
        t = js_string(text)
    ));
    assert!(
        layout["textWidth"].as_f64().expect("a number") >= 250.0,
        "the text keeps the width of the screen: {layout}"
    );
    assert!(
        layout["textHeight"].as_f64().expect("a number") <= 120.0,
        "a few lines, not a column: {layout}"
    );
    assert_eq!(
        layout["statusOwnLine"], true,
        "the failure is on a line of its own: {layout}"
    );
    assert_eq!(layout["retryInView"], true, "{layout}");
    assert_eq!(layout["retryReachable"], true, "{layout}");
    assert_eq!(layout["reconnectInView"], true, "{layout}");
    assert_fits(&mut alice, "offline");
    // Presence is unknown while offline: greyed, and said.
    assert_eq!(
        alice.eval(
            "document.getElementById('people').classList.contains('stale') \
             && !document.getElementById('people-stale').hidden"
        ),
        true
    );
    alice.screenshot("offline-phone");
    axe_both(&mut alice, "offline-phone");
    alice.set_viewport(1280, 800, false);
    alice.screenshot("offline-desktop");
    axe_both(&mut alice, "offline-desktop");
    alice.set_viewport(PHONE.0, PHONE.1, true);

    // Back online: the page reconnects and the message goes out, once.
    alice.set_offline(false);
    alice.wait_for("the connection back", CHAT_READY);
    let sent = wait_message(&mut alice, "the message sent", text, "m.sent");
    assert_eq!(sent["count"], 1);
    assert_eq!(
        alice.eval("document.getElementById('conn-banner').hidden"),
        true
    );
    alice.assert_no_exceptions();
}

// ---- Accessibility -----------------------------------------------------------------

#[test]
fn axe_finds_nothing_serious_in_any_state() {
    let Some((mut browser, server, url)) = set_up("axe", &[("general", 12), ("random", 2)]) else {
        return;
    };
    let mut alice = browser.new_person("alice");
    alice.goto(&url);
    alice.wait_for(
        "the sign-in form",
        "!document.getElementById('signin-btn').disabled",
    );
    // The checker itself finds a problem when there is one: a button
    // without a name.
    alice.eval(
        "document.getElementById('signin-form').append(Object.assign(document.createElement('button'), {id: 'nameless', type: 'button'})); true",
    );
    if let Some(found) = axe::violations(&mut alice) {
        assert!(
            found.iter().any(|v| v["id"] == "button-name"),
            "axe-core did not see a nameless button: {found:?}"
        );
    }
    alice.eval("document.getElementById('nameless').remove(); true");
    axe_both(&mut alice, "signin");
    alice.set_viewport(PHONE.0, PHONE.1, true);
    axe_both(&mut alice, "signin-phone");
    alice.set_viewport(1280, 800, false);

    // An error shown.
    alice.click("#username");
    alice.type_text("no spaces");
    alice.click("#signin-btn");
    alice.wait_for(
        "the sign-in error",
        "document.getElementById('signin-error').textContent",
    );
    axe_both(&mut alice, "signin-error");

    alice.eval("document.getElementById('username').select(); true");
    alice.type_text("alice");
    alice.click("#signin-btn");
    alice.wait_for("the chat view", CHAT_READY);
    let mut bob = server.login_in("bob", "general");
    bob.say("a-1", "a link https://example.com/docs, and more");
    say(&mut alice, "my own message");
    wait_message(
        &mut alice,
        "alice's message acked",
        "my own message",
        "m.sent",
    );
    axe_both(&mut alice, "chat");

    // Errors in the chat: a refused room name and an alert.
    alice.click("#new-room");
    alice.type_text("general");
    alice.press(Key::Enter);
    alice.wait_for(
        "the room name error",
        "document.getElementById('create-room-error').textContent",
    );
    axe_both(&mut alice, "chat-errors");

    // The delete confirmation.
    alice.click("button.room-del[data-room=\"random\"]");
    alice.wait_for(
        "the confirmation",
        "document.getElementById('delete-dialog').open",
    );
    axe_both(&mut alice, "delete-confirm");
    alice.press(Key::Escape);
    alice.wait_for(
        "the confirmation closed",
        "!document.getElementById('delete-dialog').open",
    );

    alice.set_viewport(PHONE.0, PHONE.1, true);
    axe_both(&mut alice, "chat-phone");
    alice.click("#rooms-btn");
    axe_both(&mut alice, "rooms-drawer");
    alice.click("#rooms-close");
    alice.click("#people-btn");
    axe_both(&mut alice, "people-drawer");
    alice.assert_no_exceptions();
}
