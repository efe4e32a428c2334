//! The web page in a real headless Chromium against the real server on port
//! 0: chatting across two browsers, presence, rooms, history pages, text
//! that looks like HTML, reconnecting after a restart, keyboard-only use, and
//! the spec's time bounds for the first view, room switches, delivery and
//! presence. `all_day.rs` holds issue 10's tests (reloads and blips, unread
//! counts, mentions, notifications, links, days, phones) and runs axe-core
//! (`axe.rs`) in every state.
//!
//! Each simulated person has their own browser context (nothing shared with
//! the others, like separate browsers) and is driven with real mouse and key
//! events. Screenshots of the main states go to `target/browser-shots/`.
//! Without Chromium these tests say so loudly and pass, except under
//! `CI=true`, where a missing browser is a failure.

mod all_day;
mod axe;
mod cdp;
#[path = "../support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use cdp::{Browser, Key, Page, js_string};
use parlor::Config;
use parlor::store::{NewMessage, Store};
use serde_json::{Value, json};
use support::{TempDir, TestServer, now_ms};

/// The spec's bound for the first usable view after opening the page (PR-007).
const FIRST_VIEW_BOUND: Duration = Duration::from_secs(2);
/// The spec's bound for showing a room's history after switching to it (PR-008).
const ROOM_SWITCH_BOUND: Duration = Duration::from_secs(1);
/// The spec's bound for delivering a message to the room (PR-001).
const DELIVERY_BOUND: Duration = Duration::from_secs(1);
/// The spec's bound for a presence change reaching the room (PR-003).
const PRESENCE_BOUND: Duration = Duration::from_millis(500);

// ---- Servers ------------------------------------------------------------------

/// How every test begins: its turn on Chromium, a server on port 0 whose
/// database already holds `rooms` (see [`seed`]), and the page's URL. None
/// when there is no Chromium to drive (see [`Browser::launch`]).
fn set_up(test: &str, rooms: &[(&str, usize)]) -> Option<(Browser, TestServer, String)> {
    set_up_with(test, rooms, |_| {})
}

fn set_up_with(
    test: &str,
    rooms: &[(&str, usize)],
    tweak: impl FnOnce(&mut Config),
) -> Option<(Browser, TestServer, String)> {
    let browser = Browser::launch(test)?;
    let dir = TempDir::new("browser");
    seed(&dir.db(), rooms);
    let server = TestServer::start_in(dir, tweak);
    let url = server.url();
    Some((browser, server, url))
}

/// Fills the database at `db` with `rooms`: (name, number of messages
/// "<room> message <i>" by carol and dave, one a minute up to now). Seeding
/// through the store is much faster than through the protocol.
fn seed(db: &Path, rooms: &[(&str, usize)]) {
    let mut store = Store::open(db).expect("open the database to seed it");
    let now = now_ms();
    let carol = store.login_user("carol", now).expect("add carol");
    let dave = store.login_user("dave", now).expect("add dave");
    for &(room, count) in rooms {
        let existing = store.live_rooms().expect("list rooms");
        let room_id = match existing.iter().find(|r| r.name == room) {
            Some(found) => found.id,
            None => store.create_room(room, carol.id, now).expect("add a room"),
        };
        let batch: Vec<NewMessage> = (1..=count)
            .map(|i| {
                let ts = now - (count + 1 - i) as i64 * 60_000;
                NewMessage {
                    room_id,
                    user_id: if i % 3 == 0 { dave.id } else { carol.id },
                    client_id: format!("seed-{room}-{i}"),
                    text: format!("{room} message {i}"),
                    ts,
                    received_at: ts,
                    mentions: Vec::new(),
                }
            })
            .collect();
        store.insert_messages(&batch).expect("add messages");
    }
}

// ---- What the page shows --------------------------------------------------------

/// The chat view is usable: signed in, connected, in a room whose history
/// has loaded, with the message box enabled.
const CHAT_READY: &str = "document.getElementById('app').dataset.view === 'chat' \
    && document.getElementById('conn').dataset.state === 'ready' \
    && document.getElementById('log').getAttribute('aria-busy') === 'false' \
    && !document.getElementById('composer-input').disabled \
    && !!document.querySelector('.room-btn[aria-current=\"true\"]')";

/// The room on screen is `room`, marked current in the list, with its
/// history loaded.
fn in_room(room: &str) -> String {
    let r = js_string(room);
    format!(
        "(() => {{
            const current = Array.from(document.querySelectorAll('.room-btn[aria-current=\"true\"]'));
            return current.length === 1 && current[0].dataset.room === {r}
                && document.getElementById('room-title').textContent === '#' + {r}
                && document.getElementById('log').getAttribute('aria-busy') === 'false'
                && document.getElementById('log-empty').textContent !== 'Loading messages…';
        }})()"
    )
}

/// Details of the message whose text is `text`, or null.
fn message(text: &str) -> String {
    format!(
        "(() => {{
            const li = Array.from(document.querySelectorAll('#msg-list li.msg'))
                .find((li) => li.querySelector('.msg-text').textContent === {t});
            if (!li) return null;
            return {{
                id: li.dataset.id, from: li.dataset.from, seq: li.dataset.seq || null,
                fromShown: li.querySelector('.msg-from').textContent,
                mine: li.classList.contains('mine'), pending: li.classList.contains('pending'),
                sent: li.classList.contains('sent'), failed: li.classList.contains('failed'),
                status: li.querySelector('.msg-status').textContent,
                time: li.querySelector('time.msg-time').textContent,
                title: li.querySelector('time.msg-time').title,
                retry: !!li.querySelector('button.msg-retry'),
                count: Array.from(document.querySelectorAll('#msg-list .msg-text'))
                    .filter((t) => t.textContent === {t}).length,
            }};
        }})()",
        t = js_string(text)
    )
}

/// Waits for the message `text` and returns its details.
fn wait_message(page: &mut Page, what: &str, text: &str, extra: &str) -> Value {
    let js = format!(
        "(() => {{ const m = {}; return m && ({extra}) ? m : null; }})()",
        message(text)
    );
    page.wait_for(what, &js)
}

/// The texts of the messages on screen, top to bottom.
fn texts(page: &mut Page) -> Vec<String> {
    strings(page.eval(
        "Array.from(document.querySelectorAll('#msg-list li.msg .msg-text'), (t) => t.textContent)",
    ))
}

/// The string in `value`, or "" if it is not one.
fn str_of(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

fn strings(value: Value) -> Vec<String> {
    value
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| v.as_str().expect("a string").to_string())
        .collect()
}

/// Waits until the people list shows exactly `expected` (in this order).
fn wait_people(page: &mut Page, expected: &[&str]) {
    let js = format!(
        "JSON.stringify(Array.from(document.querySelectorAll('#people-list li.person'), (li) => li.dataset.user)) === {}",
        js_string(&json!(expected).to_string())
    );
    page.wait_for(&format!("the people list to be {expected:?}"), &js);
}

/// Waits until the room list entry for `room` is named `label`.
fn wait_room_label(page: &mut Page, room: &str, label: &str) {
    let js = format!(
        "(document.querySelector('button.room-btn[data-room=' + CSS.escape({}) + ']') || {{}}).ariaLabel === {}",
        js_string(room),
        js_string(label)
    );
    page.wait_for(&format!("room {room} to be labelled {label:?}"), &js);
}

fn room_names(page: &mut Page) -> Vec<String> {
    strings(page.eval(
        "Array.from(document.querySelectorAll('#room-list li.room'), (li) => li.dataset.room)",
    ))
}

/// The selector of a room's button.
fn room_button(room: &str) -> String {
    let quoted = room.replace('\\', "\\\\").replace('"', "\\\"");
    format!("button.room-btn[data-room=\"{quoted}\"]")
}

// ---- What a person does -----------------------------------------------------------

/// Opens the page, types `name` into the sign-in form and presses Sign in,
/// then waits for the chat view with a room loaded.
fn sign_in(page: &mut Page, url: &str, name: &str) {
    page.goto(url);
    page.wait_for(
        "the sign-in form",
        "document.getElementById('app').dataset.view === 'signin' && !document.getElementById('signin-btn').disabled",
    );
    page.click("#username");
    page.type_text(name);
    page.click("#signin-btn");
    page.wait_for("the chat view", CHAT_READY);
    assert_eq!(page.text("#me-name"), name);
}

/// Types `text` into the message box and presses Enter.
fn say(page: &mut Page, text: &str) {
    page.click("#composer-input");
    page.type_text(text);
    page.press(Key::Enter);
}

/// Clicks a room in the list and waits until its history is on screen.
fn switch_room(page: &mut Page, room: &str) {
    // A room made elsewhere is listed once its `rooms` frame has arrived.
    page.wait_for(
        &format!("room {room} listed"),
        &format!(
            "document.querySelector({}) !== null",
            js_string(&room_button(room))
        ),
    );
    page.click(&room_button(room));
    page.wait_for(&format!("room {room} on screen"), &in_room(room));
}

// ---- Clocks in the page ------------------------------------------------------------
//
// Timings across two people's pages use the pages' own `Date.now()` (one
// machine, one clock), so the test's input and polling are not counted.

/// Records in `window[name]` when the next click on `selector` happens.
fn clock_click(page: &mut Page, name: &str, selector: &str) {
    page.eval(&format!(
        "window[{n}] = null;
         document.addEventListener('click', (e) => {{
             if (window[{n}] === null && e.target.closest({s})) window[{n}] = Date.now();
         }}, true);
         true",
        n = js_string(name),
        s = js_string(selector)
    ));
}

/// Records in `window[name]` when `condition` first holds after a change
/// inside `root`.
fn clock_change(page: &mut Page, name: &str, root: &str, condition: &str) {
    page.eval(&format!(
        "(() => {{
            window[{n}] = null;
            const observer = new MutationObserver(() => {{
                if (!({condition})) return;
                window[{n}] = Date.now();
                observer.disconnect();
            }});
            observer.observe(document.querySelector({r}), {{subtree: true, childList: true, attributes: true}});
            return true;
        }})()",
        n = js_string(name),
        r = js_string(root)
    ));
}

/// Waits for the clock `name` to be set and returns it (ms since the epoch).
fn clock(page: &mut Page, name: &str) -> i64 {
    let js = format!("window[{}]", js_string(name));
    page.wait_for(&format!("the clock {name}"), &js)
        .as_i64()
        .expect("Date.now() is a whole number")
}

fn millis(from: i64, to: i64) -> Duration {
    Duration::from_millis(u64::try_from(to - from).expect("the clocks are in order"))
}

// ---- Tests -------------------------------------------------------------------------

#[test]
fn two_browsers_chat_and_both_see_the_message_and_the_senders_tick() {
    let Some((mut browser, _server, url)) = set_up("chat", &[]) else {
        return;
    };
    let mut alice = browser.new_person("alice");
    let mut bob = browser.new_person("bob");
    sign_in(&mut alice, &url, "alice");
    sign_in(&mut bob, &url, "bob");
    wait_people(&mut alice, &["alice", "bob"]);

    // Record every state alice's own message goes through.
    alice.eval(
        "window.__states = [];
         new MutationObserver(() => {
             for (const li of document.querySelectorAll('#msg-list li.mine')) {
                 const s = li.className.replace(/\\bmsg\\b|\\bmine\\b|\\bgrouped\\b/g, '').trim()
                     + ':' + li.querySelector('.msg-status').textContent;
                 if (window.__states[window.__states.length - 1] !== s) window.__states.push(s);
             }
         }).observe(document.getElementById('msg-list'),
             {subtree: true, childList: true, attributes: true, characterData: true});
         true",
    );
    let hello = "Hello Bob!\nThis is on a second line.";
    alice.click("#composer-input");
    alice.type_text(hello);
    assert_eq!(
        alice.eval("document.getElementById('composer-input').value"),
        hello,
        "Shift+Enter adds a line instead of sending"
    );
    clock_click(&mut alice, "sentAt", "#send-btn");
    clock_change(
        &mut bob,
        "shownAt",
        "#msg-list",
        &format!("{} !== null", message(hello)),
    );
    alice.click("#send-btn");
    let mine = wait_message(&mut alice, "alice's message acked", hello, "m.sent");
    assert_eq!(mine["status"], "✓", "{mine}");
    assert_eq!(mine["mine"], true);
    assert_eq!(mine["fromShown"], "alice");
    assert_eq!(mine["count"], 1);
    assert!(
        mine["seq"].is_string(),
        "a stored message carries its seq: {mine}"
    );
    let states = strings(alice.eval("window.__states"));
    assert_eq!(
        states,
        ["pending:Sending…", "sent:✓"],
        "alice's message went from sending to sent"
    );
    assert_eq!(
        alice.eval("document.getElementById('composer-input').value"),
        ""
    );

    let theirs = wait_message(&mut bob, "alice's message at bob's", hello, "true");
    let delivery = millis(clock(&mut alice, "sentAt"), clock(&mut bob, "shownAt"));
    eprintln!("browser timings: send in one browser to shown in the other {delivery:?}");
    assert!(delivery <= DELIVERY_BOUND, "delivery took {delivery:?}");
    assert_eq!(theirs["from"], "alice");
    assert_eq!(theirs["seq"], mine["seq"]);
    assert_eq!(theirs["mine"], false);
    assert_eq!(
        theirs["status"], "",
        "only the sender sees a delivery state"
    );
    assert!(
        theirs["title"]
            .as_str()
            .is_some_and(|t| t.len() > str_of(&theirs["time"]).len()),
        "the time's title is the full date: {theirs}"
    );
    // The line break is kept on screen, not only in the text.
    let lines = bob.eval(&format!(
        "(() => {{ const li = document.querySelector('#msg-list li.msg[data-seq=\"{}\"] .msg-text');
            return li.getClientRects()[0].height > 1.5 * parseFloat(getComputedStyle(li).lineHeight); }})()",
        str_of(&theirs["seq"])
    ));
    assert_eq!(lines, true, "the second line is shown on its own line");

    say(&mut bob, "Hi Alice, got it.");
    let reply = wait_message(&mut bob, "bob's reply acked", "Hi Alice, got it.", "m.sent");
    assert_eq!(reply["status"], "✓");
    let seen = wait_message(
        &mut alice,
        "bob's reply at alice's",
        "Hi Alice, got it.",
        "true",
    );
    assert_eq!(seen["from"], "bob");
    assert_eq!(seen["status"], "");
    assert_eq!(
        texts(&mut alice),
        texts(&mut bob),
        "both see the same conversation"
    );

    alice.screenshot("chat-alice");
    bob.screenshot("chat-bob");
    alice.set_color_scheme("dark");
    alice.screenshot("chat-alice-dark");
    alice.set_viewport(360, 740, true);
    alice.screenshot("chat-alice-phone");
    alice.assert_no_exceptions();
    bob.assert_no_exceptions();
}

#[test]
fn presence_appears_and_disappears_live() {
    let Some((mut browser, server, url)) = set_up("presence", &[]) else {
        return;
    };
    let mut alice = browser.new_person("alice");
    sign_in(&mut alice, &url, "alice");
    wait_people(&mut alice, &["alice"]);
    assert_eq!(
        alice.eval("document.getElementById('people-list').getAttribute('aria-label')"),
        "People in general"
    );
    wait_room_label(&mut alice, "general", "general, 1 person");

    let mut bob = browser.new_person("bob");
    sign_in(&mut bob, &url, "bob");
    wait_people(&mut alice, &["alice", "bob"]);
    wait_room_label(&mut alice, "general", "general, 2 people");
    wait_people(&mut bob, &["alice", "bob"]);
    assert_eq!(
        bob.text("#people-list li.person[data-user=\"bob\"] .person-you"),
        "(you)"
    );
    alice.screenshot("presence-two-people");

    // A third person, through the protocol, comes and goes too.
    let mut carol = server.login_in("carol", "general");
    wait_people(&mut alice, &["alice", "bob", "carol"]);
    carol.request(json!({"type": "leave"}));
    wait_people(&mut alice, &["alice", "bob"]);

    bob.close();
    wait_people(&mut alice, &["alice"]);
    wait_room_label(&mut alice, "general", "general, 1 person");
    alice.assert_no_exceptions();
}

#[test]
fn switching_rooms_moves_presence_and_loads_history() {
    let Some((mut browser, _server, url)) = set_up("switch", &[("general", 20), ("design", 30)])
    else {
        return;
    };
    let mut alice = browser.new_person("alice");
    let mut bob = browser.new_person("bob");
    sign_in(&mut alice, &url, "alice");
    sign_in(&mut bob, &url, "bob");
    wait_people(&mut alice, &["alice", "bob"]);
    assert_eq!(
        texts(&mut bob).last().map(String::as_str),
        Some("general message 20")
    );

    clock_click(&mut bob, "leftAt", &room_button("design"));
    clock_change(
        &mut alice,
        "goneAt",
        "#people-list",
        "!document.querySelector('#people-list li.person[data-user=\"bob\"]')",
    );
    switch_room(&mut bob, "design");
    let presence = millis(clock(&mut bob, "leftAt"), clock(&mut alice, "goneAt"));
    eprintln!(
        "browser timings: room switch in one browser to presence shown in the other {presence:?}"
    );
    assert!(
        presence <= PRESENCE_BOUND,
        "the presence change took {presence:?}"
    );
    let shown = texts(&mut bob);
    let expected: Vec<String> = (1..=30).map(|i| format!("design message {i}")).collect();
    assert_eq!(shown, expected, "bob sees design's history, oldest first");
    wait_people(&mut bob, &["bob"]);
    wait_people(&mut alice, &["alice"]);
    wait_room_label(&mut alice, "general", "general, 1 person");
    wait_room_label(&mut alice, "design", "design, 1 person");
    assert_eq!(
        bob.eval("localStorage.getItem('parlor.room')"),
        "design",
        "the room is remembered for the next visit"
    );
    bob.screenshot("room-switched-bob");

    switch_room(&mut alice, "design");
    wait_people(&mut bob, &["alice", "bob"]);
    wait_people(&mut alice, &["alice", "bob"]);
    say(&mut bob, "Over here in design");
    wait_message(
        &mut alice,
        "bob's message in design",
        "Over here in design",
        "true",
    );

    switch_room(&mut bob, "general");
    wait_people(&mut alice, &["alice"]);
    wait_people(&mut bob, &["bob"]);
    let general = texts(&mut bob);
    assert_eq!(general.len(), 20);
    assert!(
        general.iter().all(|t| t.starts_with("general message")),
        "nothing of design is left on screen: {general:?}"
    );
    alice.assert_no_exceptions();
    bob.assert_no_exceptions();
}

#[test]
fn creating_a_room_joins_it_and_deleting_it_asks_in_the_page() {
    let Some((mut browser, server, url)) = set_up("rooms", &[]) else {
        return;
    };
    let mut bob = server.login_in("bob", "general");
    let mut alice = browser.new_person("alice");
    sign_in(&mut alice, &url, "alice");

    alice.click("#new-room");
    alice.type_text("Design Team");
    alice.press(Key::Enter);
    alice.wait_for("the new room joined", &in_room("Design Team"));
    alice.wait_for(
        "the message box focused in the new room",
        "document.activeElement === document.getElementById('composer-input')",
    );
    assert_eq!(room_names(&mut alice), ["Design Team", "general"]);
    assert_eq!(alice.eval("document.getElementById('new-room').value"), "");
    assert_eq!(
        alice.text("#log-empty"),
        "No messages in #Design Team yet. Say hello!"
    );
    let rooms = bob.wait_for("the rooms update", |f| {
        f["type"] == "rooms"
            && f["rooms"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["name"] == "Design Team"))
    });
    let created = rooms["rooms"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["name"] == "Design Team");
    assert_eq!(created.map(|r| &r["created_by"]), Some(&json!("alice")));
    bob.join("Design Team");
    wait_people(&mut alice, &["alice", "bob"]);
    alice.screenshot("room-created");

    // A name that is taken (in any casing) is refused inline.
    alice.click("#new-room");
    alice.type_text("GENERAL");
    alice.click("#create-room-btn");
    let error = alice.wait_for(
        "the duplicate-name error",
        "document.getElementById('create-room-error').textContent",
    );
    assert!(str_of(&error).contains("already exists"), "{error}");
    assert_eq!(
        alice.eval("document.getElementById('new-room').getAttribute('aria-invalid')"),
        "true"
    );
    assert_eq!(
        alice.eval("document.getElementById('create-room-error').getAttribute('role')"),
        "alert"
    );
    alice.screenshot("room-create-error");

    // Deleting asks first, in the page (no confirm() that stops everything).
    alice.click("button.room-del[data-room=\"Design Team\"]");
    alice.wait_for(
        "the confirmation",
        "document.getElementById('delete-dialog').open \
         && document.activeElement === document.getElementById('delete-cancel')",
    );
    assert!(
        alice.text("#delete-title").contains("Design Team"),
        "the confirmation names the room: {}",
        alice.text("#delete-title")
    );
    alice.screenshot("room-delete-confirm");
    // Saying no keeps the room, and focus goes back to the delete button.
    alice.click("#delete-cancel");
    alice.wait_for(
        "the confirmation closed",
        "!document.getElementById('delete-dialog').open \
         && document.activeElement.matches('button.room-del[data-room=\"Design Team\"]')",
    );
    // The room still works: bob's next message there reaches alice.
    bob.say("b-1", "still here");
    wait_message(
        &mut alice,
        "bob's message after the cancel",
        "still here",
        "true",
    );
    assert!(room_names(&mut alice).contains(&"Design Team".to_string()));

    alice.click("button.room-del[data-room=\"Design Team\"]");
    alice.wait_for(
        "the confirmation again",
        "document.getElementById('delete-dialog').open",
    );
    alice.click("#delete-confirm");
    alice.wait_for(
        "the room gone from the list",
        "!document.querySelector('li.room[data-room=\"Design Team\"]')",
    );
    assert!(alice.dialogs().is_empty(), "{:?}", alice.dialogs());
    let deleted = bob.expect("room_deleted");
    assert_eq!(deleted["room"], "Design Team");
    alice.wait_for(
        "the view to leave the deleted room",
        "document.getElementById('room-title').textContent === 'No room' \
         && document.getElementById('composer-input').disabled",
    );
    assert!(
        alice.text("#chat-alert").contains("was deleted"),
        "{}",
        alice.text("#chat-alert")
    );
    assert_eq!(room_names(&mut alice), ["general"]);
    alice.screenshot("room-deleted");
    switch_room(&mut alice, "general");
    alice.assert_no_exceptions();
}

#[test]
fn history_pages_and_page_sizes_over_1234_messages() {
    let Some((mut browser, _server, url)) = set_up("history", &[("general", 1234)]) else {
        return;
    };
    let mut alice = browser.new_person("alice");
    sign_in(&mut alice, &url, "alice");

    // Waits for the position text, then checks the list holds exactly
    // messages first..=last in order and which pager buttons work.
    let expect_page = |page: &mut Page, first: usize, last: usize, older: bool, newer: bool| {
        let pos = format!("Messages {}–{} of 1,234", thousands(first), thousands(last));
        page.wait_for(
            &format!("the position {pos:?}"),
            &format!(
                "document.getElementById('page-pos').textContent === {} \
                 && document.getElementById('log').getAttribute('aria-busy') === 'false'",
                js_string(&pos)
            ),
        );
        let shown = texts(page);
        let expected: Vec<String> = (first..=last)
            .map(|i| format!("general message {i}"))
            .collect();
        assert_eq!(shown.len(), expected.len(), "{pos}");
        assert!(
            shown == expected,
            "{pos}: the list is not messages {first}..={last}"
        );
        // The app fills the window; nothing sticks out for the page itself
        // to scroll away into blank space.
        let overflow = page.eval("document.documentElement.scrollHeight - window.innerHeight");
        assert!(
            overflow.as_i64().unwrap() <= 0,
            "{pos}: the page overflows by {overflow}px"
        );
        let buttons = page.eval(
            "[!document.getElementById('older-btn').disabled, !document.getElementById('newer-btn').disabled]",
        );
        assert_eq!(
            buttons,
            json!([older, newer]),
            "{pos}: [older, newer] usable"
        );
    };

    // Page size 50: the newest page, then every older page to the start.
    assert_eq!(
        alice.eval("document.getElementById('page-size').value"),
        "50"
    );
    expect_page(&mut alice, 1185, 1234, true, false);
    for k in 1..=23 {
        alice.click("#older-btn");
        expect_page(&mut alice, 1185 - 50 * k, 1234 - 50 * k, true, true);
    }
    alice.screenshot("history-older-page");
    alice.click("#older-btn");
    expect_page(&mut alice, 1, 34, false, true);
    alice.screenshot("history-first-page");
    alice.click("#newer-btn");
    expect_page(&mut alice, 35, 84, true, true);

    // A larger page size while reading old history keeps the message at
    // the top of the view where it is: the new page starts with it.
    let top_message = "(() => {
        const top = document.getElementById('log').getBoundingClientRect().top;
        const li = Array.from(document.querySelectorAll('#msg-list li.msg'))
            .find((li) => li.getBoundingClientRect().bottom > top + 1);
        return li ? li.querySelector('.msg-text').textContent : null;
    })()";
    assert_eq!(alice.eval(top_message), "general message 35");
    // A person tabs to the select and picks the next size with the arrow
    // keys; the select is focused directly to keep this short.
    alice.eval("document.getElementById('page-size').focus()");
    alice.press(Key::ArrowDown);
    expect_page(&mut alice, 35, 134, true, true);
    assert_eq!(alice.eval(top_message), "general message 35");
    alice.screenshot("history-page-size-kept-place");
    // Back to the newest page by picking the room again.
    alice.click(&room_button("general"));
    expect_page(&mut alice, 1135, 1234, true, false);

    // Each larger page size from the newest page: the newest page, one
    // older, back to the newest.
    for size in [200, 500] {
        alice.eval("document.getElementById('page-size').focus()");
        alice.press(Key::ArrowDown);
        alice.wait_for(
            &format!("page size {size}"),
            &format!("document.getElementById('page-size').value === '{size}'"),
        );
        expect_page(&mut alice, 1235 - size, 1234, true, false);
        alice.click("#older-btn");
        expect_page(&mut alice, 1235 - 2 * size, 1234 - size, true, true);
        alice.click("#newer-btn");
        expect_page(&mut alice, 1235 - size, 1234, true, false);
    }
    // At 500 the start is two pages back, and the last page is short.
    alice.click("#older-btn");
    expect_page(&mut alice, 235, 734, true, true);
    alice.click("#older-btn");
    expect_page(&mut alice, 1, 234, false, true);
    alice.click("#newer-btn");
    expect_page(&mut alice, 235, 734, true, true);
    alice.screenshot("history-page-size-500");

    // The page size is remembered across a reload.
    alice.reload();
    alice.wait_for("the chat after the reload", CHAT_READY);
    assert_eq!(
        alice.eval("document.getElementById('page-size').value"),
        "500"
    );
    expect_page(&mut alice, 735, 1234, true, false);
    alice.assert_no_exceptions();
}

/// 1234 -> "1,234", as the page writes numbers.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn html_in_messages_and_room_names_is_shown_as_text_and_runs_nothing() {
    let Some((mut browser, server, url)) = set_up("html", &[]) else {
        return;
    };
    let mut alice = browser.new_person("alice");
    let mut bob = browser.new_person("bob");
    sign_in(&mut alice, &url, "alice");
    sign_in(&mut bob, &url, "bob");

    let img = "<img src=x onerror=\"window.__pwned=1;document.title='pwned'\">";
    let script = "<script>window.__pwned=2</script><b>bold?</b> <a href=\"https://example.com/\">link</a> https://example.com/";
    say(&mut alice, img);
    say(&mut alice, script);
    wait_message(&mut alice, "the img message acked", img, "m.sent");
    wait_message(&mut alice, "the script message acked", script, "m.sent");
    wait_message(&mut bob, "the img message at bob's", img, "true");
    wait_message(&mut bob, "the script message at bob's", script, "true");

    // A room named like markup, made by someone else through the protocol.
    let room = "<img src=x onerror=window.__pwned=3>";
    let mut carol = server.login("carol");
    let made = carol.request(json!({"type": "create_room", "room": room}));
    assert_eq!(made["type"], "rooms", "{made}");
    switch_room(&mut bob, room);
    // A round trip after everything arrived: had an element been made, its
    // error handler would have run by now.
    say(&mut bob, "after the markup");
    wait_message(
        &mut bob,
        "the last message acked",
        "after the markup",
        "m.sent",
    );

    for page in [&mut alice, &mut bob] {
        let elements = page.eval(
            "document.querySelectorAll('#app img, #app script, #msg-list b, #room-list b, #room-list a').length",
        );
        assert_eq!(elements, 0, "no element was made from the text");
        assert_eq!(
            page.eval("typeof window.__pwned"),
            "undefined",
            "nothing ran"
        );
        assert_ne!(page.eval("document.title"), "pwned");
        assert!(
            room_names(page).contains(&room.to_string()),
            "the room's name is listed as text"
        );
        page.assert_no_exceptions();
    }
    assert_eq!(bob.text("#room-title"), format!("#{room}"));
    switch_room(&mut bob, "general");
    let shown = texts(&mut bob);
    assert!(shown.contains(&img.to_string()) && shown.contains(&script.to_string()));
    // The two plain addresses are links; the <a> written as text is not.
    let link = json!([
        "https://example.com/",
        "https://example.com/",
        "_blank",
        "noopener noreferrer"
    ]);
    for page in [&mut alice, &mut bob] {
        let links = page.eval(
            "Array.from(document.querySelectorAll('#msg-list a'), (a) => [a.textContent, a.href, a.target, a.rel])",
        );
        assert_eq!(links, json!([link, link]), "only the addresses are links");
    }
    bob.screenshot("html-as-text");
}

#[test]
fn timestamps_out_of_any_calendar_show_as_unknown_time() {
    let Some(mut browser) = Browser::launch("timestamps") else {
        return;
    };
    let dir = TempDir::new("browser");
    seed(&dir.db(), &[("general", 3)]);
    // Stored by older servers, which took a client's clock on trust: far
    // outside the dates JavaScript can show (±8.64e15 ms).
    let mut store = Store::open(&dir.db()).expect("open the database");
    let general = store.live_rooms().expect("list rooms")[0].id;
    let carol = store.login_user("carol", now_ms()).expect("carol");
    let odd: Vec<NewMessage> = [
        ("ts-min", -9_223_370_240_897_858_021),
        ("ts-max", i64::MAX),
        ("ts-past-js", 8_640_000_000_000_001),
    ]
    .into_iter()
    .map(|(id, ts)| NewMessage {
        room_id: general,
        user_id: carol.id,
        client_id: id.into(),
        text: format!("stored with {id}"),
        ts,
        received_at: now_ms(),
        mentions: Vec::new(),
    })
    .collect();
    store.insert_messages(&odd).expect("add the messages");
    drop(store);
    let server = TestServer::start_in(dir, |_| {});
    let url = server.url();

    let mut alice = browser.new_person("alice");
    sign_in(&mut alice, &url, "alice");
    for id in ["ts-min", "ts-max", "ts-past-js"] {
        let shown = wait_message(&mut alice, id, &format!("stored with {id}"), "true");
        assert_eq!(shown["time"], "unknown time", "{shown}");
    }
    let ordinary = wait_message(&mut alice, "a seeded message", "general message 3", "true");
    assert_ne!(ordinary["time"], "unknown time", "{ordinary}");
    say(&mut alice, "still works");
    wait_message(&mut alice, "the new message acked", "still works", "m.sent");
    alice.assert_no_exceptions();
    alice.screenshot("unknown-times");
}

#[test]
fn after_a_restart_reconnect_catches_up_and_resends() {
    let Some((mut browser, mut server, url)) = set_up("reconnect", &[("general", 5)]) else {
        return;
    };
    let (http, ws) = (server.http_addr(), server.ws_addr());
    let mut alice = browser.new_person("alice");
    sign_in(&mut alice, &url, "alice");
    assert!(alice.text("#conn").contains("Connected"));

    server.stop();
    alice.wait_for(
        "the reconnecting state",
        "document.getElementById('conn').dataset.state === 'reconnecting' \
         && document.getElementById('conn').textContent.includes('Reconnecting (attempt ')",
    );
    alice.screenshot("reconnecting");
    // A message written while the server is away waits, then fails once
    // the page gives up.
    say(&mut alice, "written while away");
    let waiting = wait_message(
        &mut alice,
        "the waiting message",
        "written while away",
        "true",
    );
    assert_eq!(waiting["pending"], true, "{waiting}");
    assert_eq!(waiting["status"], "Sending…");

    // Watch the attempts count up until the page gives up (~15 s of backoff).
    let mut attempts: Vec<u32> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = alice.eval(
            "[document.getElementById('conn').dataset.state, document.getElementById('conn').textContent]",
        );
        let text = state[1].as_str().unwrap_or_default().to_string();
        if state[0] == "offline" {
            assert!(text.contains("You are offline"), "{text}");
            break;
        }
        if let Some(k) = text
            .strip_prefix("Reconnecting (attempt ")
            .and_then(|rest| rest.strip_suffix(" of 5)"))
        {
            let k: u32 = k.parse().expect("an attempt number");
            if attempts.last() != Some(&k) {
                attempts.push(k);
            }
        }
        assert!(
            Instant::now() < deadline,
            "never offline; attempts seen {attempts:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("reconnect attempts seen: {attempts:?}");
    assert!(
        attempts.windows(2).all(|w| w[0] < w[1]) && attempts.last() == Some(&5),
        "the attempts count up to 5: {attempts:?}"
    );
    alice.wait_for(
        "the Reconnect button",
        "!document.getElementById('reconnect-btn').hidden",
    );
    let failed = wait_message(
        &mut alice,
        "the failed message",
        "written while away",
        "m.failed",
    );
    assert_eq!(failed["retry"], true, "{failed}");
    assert!(
        str_of(&failed["status"]).contains("Could not send, try again later"),
        "{failed}"
    );
    alice.screenshot("offline");

    server.restart_on(http, ws);
    let mut bob = server.login_in("bob", "general");
    for i in 1..=3 {
        let ack = bob.say(
            &format!("away-{i}"),
            &format!("sent while you were away {i}"),
        );
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    // Still offline: the page waits for the person.
    assert_eq!(
        alice.eval("document.getElementById('conn').dataset.state"),
        "offline"
    );

    alice.click("#reconnect-btn");
    alice.wait_for(
        "the connection back",
        "document.getElementById('conn').dataset.state === 'ready'",
    );
    assert!(alice.text("#conn").contains("Connected"));
    for i in 1..=3 {
        let text = format!("sent while you were away {i}");
        let m = wait_message(&mut alice, "a missed message", &text, "true");
        assert_eq!(m["from"], "bob");
        assert_eq!(m["count"], 1, "{text} shown once");
    }
    let resent = wait_message(
        &mut alice,
        "the resent message acked",
        "written while away",
        "m.sent",
    );
    assert_eq!(resent["status"], "✓");
    assert_eq!(resent["count"], 1);
    wait_people(&mut alice, &["alice", "bob"]);
    let shown = texts(&mut alice);
    // Ordered by (ts, seq): alice wrote hers before bob's, though it was
    // stored after them.
    let expected: Vec<String> = (1..=5)
        .map(|i| format!("general message {i}"))
        .chain(["written while away".to_string()])
        .chain((1..=3).map(|i| format!("sent while you were away {i}")))
        .collect();
    assert_eq!(shown, expected, "nothing lost, nothing doubled, in order");

    // Bob received alice's resent message, and the server stored it once.
    bob.wait_for("alice's resent message", |f| {
        f["type"] == "message" && f["text"] == "written while away"
    });
    let history =
        bob.request(json!({"type": "history", "room": "general", "since_seq": 0, "limit": 50}));
    let stored = history["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["text"] == "written while away")
        .count();
    assert_eq!(stored, 1, "{history}");
    alice.screenshot("reconnected");
    alice.assert_no_exceptions();
}

/// Presses Tab (or Shift+Tab) until `target` (a selector) has the focus,
/// checking that every stop shows a visible focus ring.
fn tab_to(page: &mut Page, target: &str, backwards: bool) {
    let key = if backwards { Key::ShiftTab } else { Key::Tab };
    let is_target = format!(
        "document.activeElement === document.querySelector({})",
        js_string(target)
    );
    for _ in 0..40 {
        page.press(key);
        let focus = page.eval(
            "(() => { const el = document.activeElement;
                return {tag: el.tagName, html: el.outerHTML.slice(0, 100), visible: el === document.body || el.matches(':focus-visible')}; })()",
        );
        assert_eq!(
            focus["visible"], true,
            "focus is visible on {}",
            focus["html"]
        );
        if page.eval(&is_target) == true {
            return;
        }
    }
    panic!("could not Tab to {target}");
}

#[test]
fn keyboard_alone_signs_in_sends_and_switches_rooms() {
    let Some((mut browser, _server, url)) = set_up("keyboard", &[("general", 3), ("random", 4)])
    else {
        return;
    };
    let mut kim = browser.new_person("kim");
    kim.goto(&url);
    kim.wait_for(
        "the username box focused",
        "document.activeElement === document.getElementById('username')",
    );
    kim.type_text("kim");
    kim.press(Key::Enter);
    kim.wait_for("the chat view", CHAT_READY);
    kim.wait_for(
        "the message box focused",
        "document.activeElement === document.getElementById('composer-input')",
    );

    kim.type_text("typed with keys only\nand a second line");
    kim.press(Key::Enter);
    let sent = wait_message(
        &mut kim,
        "the typed message acked",
        "typed with keys only\nand a second line",
        "m.sent",
    );
    assert_eq!(sent["status"], "✓");

    tab_to(&mut kim, &room_button("random"), true);
    kim.screenshot("keyboard-focus-on-room");
    kim.press(Key::Enter);
    kim.wait_for("room random on screen", &in_room("random"));
    assert_eq!(texts(&mut kim).len(), 4);

    // A new room, by keyboard too; creating it joins it.
    tab_to(&mut kim, "#new-room", false);
    kim.type_text("kbd");
    kim.press(Key::Enter);
    kim.wait_for("room kbd on screen", &in_room("kbd"));

    // The skip link at the top of the page leads to the message box.
    tab_to(&mut kim, "#skip-link", true);
    kim.screenshot("keyboard-skip-link");
    kim.press(Key::Enter);
    kim.wait_for(
        "the message box focused by the skip link",
        "document.activeElement === document.getElementById('composer-input')",
    );
    kim.type_text("hello kbd");
    kim.press(Key::Enter);
    wait_message(&mut kim, "the message in kbd", "hello kbd", "m.sent");
    kim.assert_no_exceptions();
}

#[test]
fn sign_in_errors_are_shown_inline() {
    let Some((mut browser, server, url)) = set_up_with("signin", &[], |c| c.max_users = 2) else {
        return;
    };
    let mut bob = server.login_in("bob", "general");
    let mut page = browser.new_person("visitor");
    page.goto(&url);
    page.wait_for(
        "the sign-in form",
        "!document.getElementById('signin-btn').disabled",
    );
    page.screenshot("signin");

    let attempt = |page: &mut Page, name: &str| -> String {
        page.eval("document.getElementById('username').select(); true");
        page.type_text(name);
        page.click("#signin-btn");
        let error = page.wait_for(
            &format!("an error for {name:?}"),
            "document.getElementById('signin-error').textContent",
        );
        assert_eq!(
            page.eval("document.getElementById('app').dataset.view"),
            "signin"
        );
        assert_eq!(
            page.eval("document.getElementById('username').getAttribute('aria-invalid')"),
            "true"
        );
        str_of(&error).to_string()
    };
    let invalid = attempt(&mut page, "no spaces please");
    assert!(invalid.contains("cannot be used"), "{invalid}");
    page.screenshot("signin-error");
    let taken = attempt(&mut page, "BOB");
    assert!(taken.contains("already signed in"), "{taken}");

    let mut carol = server.login_in("carol", "general");
    let full = attempt(&mut page, "dana");
    assert!(full.contains("full"), "{full}");

    carol.request(json!({"type": "leave"}));
    drop(carol);
    bob.wait_for("carol gone", |f| {
        f["type"] == "presence" && f["state"] == "left"
    });
    // The hub may see carol's socket close a moment after her leave.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        page.eval("document.getElementById('username').select(); true");
        page.type_text("dana");
        page.click("#signin-btn");
        let outcome = page.wait_for(
            "dana's sign-in to finish",
            &format!("({CHAT_READY}) ? 'in' : document.getElementById('signin-error').textContent"),
        );
        if outcome == "in" {
            break;
        }
        assert!(Instant::now() < deadline, "dana never got in: {outcome}");
    }
    assert_eq!(
        page.eval("document.getElementById('signin-error').textContent"),
        ""
    );
    page.assert_no_exceptions();
}

#[test]
fn first_view_and_room_switch_are_within_the_specs_bounds() {
    // More switches than the default rate limit allows, to measure several.
    let Some((mut browser, _server, url)) =
        set_up_with("timing", &[("general", 1234), ("random", 1234)], |c| {
            c.room_switches_per_minute = 100
        })
    else {
        return;
    };
    let mut alice = browser.new_person("alice");

    let started = Instant::now();
    alice.goto(&url);
    alice.wait_for(
        "the sign-in form ready",
        "document.getElementById('app').dataset.view === 'signin' \
         && document.activeElement === document.getElementById('username') \
         && !document.getElementById('signin-btn').disabled",
    );
    let first_visit = started.elapsed();

    alice.type_text("alice");
    let started = Instant::now();
    alice.click("#signin-btn");
    alice.wait_for(
        "the chat after signing in",
        &format!("({CHAT_READY}) && {}", last_is("general", 1234)),
    );
    let sign_in = started.elapsed();

    // A returning visitor: the page signs in again with the stored token.
    let started = Instant::now();
    alice.reload();
    alice.wait_for(
        "the chat after a reload",
        &format!("({CHAT_READY}) && {}", last_is("general", 1234)),
    );
    let returning = started.elapsed();
    assert_eq!(texts(&mut alice).len(), 50);

    let mut switches = Vec::new();
    for room in [
        "random", "general", "random", "general", "random", "general",
    ] {
        switches.push(timed_switch(&mut alice, room, 50));
    }

    // With the largest page: 500 messages to lay out.
    // One size at a time, letting each page load: pressing on while a page
    // loads leaves the list at the earlier size (reported as a page bug).
    alice.eval("document.getElementById('page-size').focus()");
    for size in [100, 200, 500] {
        alice.press(Key::ArrowDown);
        alice.wait_for(
            &format!("page size {size}"),
            &format!("document.querySelectorAll('#msg-list li.msg').length === {size}"),
        );
    }
    let mut big_switches = Vec::new();
    for room in ["random", "general"] {
        big_switches.push(timed_switch(&mut alice, room, 500));
    }
    alice.screenshot("timing-page-500");

    eprintln!(
        "browser timings: first visit to sign-in form {first_visit:?}; sign-in to chat {sign_in:?}; \
         reload to chat {returning:?}; room switches (50 messages; click to drawn in the page, \
         and as the test saw it) {switches:?}; room switches (500 messages) {big_switches:?}"
    );
    assert!(
        first_visit <= FIRST_VIEW_BOUND,
        "first view took {first_visit:?}"
    );
    assert!(sign_in <= FIRST_VIEW_BOUND, "signing in took {sign_in:?}");
    assert!(
        returning <= FIRST_VIEW_BOUND,
        "the returning view took {returning:?}"
    );
    for (in_page, _) in switches.iter().chain(&big_switches) {
        assert!(
            *in_page <= ROOM_SWITCH_BOUND,
            "a room switch took {in_page:?}"
        );
    }
    alice.assert_no_exceptions();
}

/// The last message on screen is "<room> message <n>".
fn last_is(room: &str, n: usize) -> String {
    format!(
        "(Array.from(document.querySelectorAll('#msg-list .msg-text')).pop() || {{}}).textContent === {}",
        js_string(&format!("{room} message {n}"))
    )
}

/// Clicks `room` and returns how long it took from the click to the first
/// frame drawn with the room's newest `count` messages: by the page's own
/// clock (from the click event to the frame after the list changed), and as
/// the test saw it (including its own input and polling).
fn timed_switch(page: &mut Page, room: &str, count: usize) -> (Duration, Duration) {
    let last = format!("{room} message 1234");
    page.eval(&format!(
        "(() => {{
            const s = window.__switch = {{room: {r}, last: {l}, count: {count}, clicked: null, drawn: null}};
            document.addEventListener('click', (e) => {{
                if (s.clicked === null && e.target.closest('.room-btn')) s.clicked = performance.now();
            }}, true);
            const list = document.getElementById('msg-list');
            const observer = new MutationObserver(() => {{
                const texts = list.querySelectorAll('li.msg .msg-text');
                const current = document.querySelector('.room-btn[aria-current=\"true\"]');
                if (s.clicked === null || !current || current.dataset.room !== s.room
                    || texts.length !== s.count || texts[texts.length - 1].textContent !== s.last) return;
                observer.disconnect();
                requestAnimationFrame(() => setTimeout(() => {{ s.drawn = performance.now(); }}, 0));
            }});
            observer.observe(list, {{childList: true}});
            return true;
        }})()",
        r = js_string(room),
        l = js_string(&last),
    ));
    let started = Instant::now();
    page.click(&room_button(room));
    let took = page.wait_for(
        &format!("{room}'s history drawn"),
        "window.__switch.drawn !== null && window.__switch.drawn - window.__switch.clicked",
    );
    let seen = started.elapsed();
    page.wait_for(&format!("room {room} on screen"), &in_room(room));
    assert_eq!(texts(page).len(), count);
    let in_page = Duration::from_secs_f64(took.as_f64().expect("a number of ms") / 1000.0);
    (in_page, seen)
}

#[test]
fn a_join_code_typed_once_or_brought_by_the_link_signs_in() {
    let Some((mut browser, _server, url)) = set_up_with("joincode", &[], |c| {
        c.join_code = Some("tea at five".into())
    }) else {
        return;
    };
    let mut page = browser.new_person("typist");
    page.goto(&url);
    page.wait_for(
        "the sign-in form",
        "!document.getElementById('signin-btn').disabled",
    );
    assert_eq!(
        page.eval("document.getElementById('joincode-row').hidden"),
        true,
        "the code is asked for only when the server wants one"
    );
    page.click("#username");
    page.type_text("ann");
    page.click("#signin-btn");
    let asked = page.wait_for(
        "the join code asked for",
        "!document.getElementById('joincode-row').hidden \
         && document.getElementById('signin-error').textContent",
    );
    assert!(str_of(&asked).contains("join code"), "{asked}");
    page.screenshot("joincode");
    page.click("#joincode");
    page.type_text("tea at six");
    page.click("#signin-btn");
    page.wait_for(
        "a wrong code refused",
        "document.getElementById('signin-error').textContent.includes('not right')",
    );
    page.eval("document.getElementById('joincode').select(); true");
    page.type_text("tea at five");
    page.click("#signin-btn");
    page.wait_for("the chat view", CHAT_READY);
    assert_eq!(page.text("#me-name"), "ann");
    page.assert_no_exceptions();

    // The link's code is taken in and taken out of the address bar.
    let mut linked = browser.new_person("linked");
    linked.goto(&format!("{url}?code=tea%20at%20five"));
    linked.wait_for(
        "the sign-in form",
        "!document.getElementById('signin-btn').disabled",
    );
    assert_eq!(linked.eval("window.location.search"), "");
    linked.click("#username");
    linked.type_text("ben");
    linked.click("#signin-btn");
    linked.wait_for("the chat view", CHAT_READY);
    assert_eq!(
        linked.eval("document.getElementById('joincode-row').hidden"),
        true
    );
    linked.assert_no_exceptions();
}
