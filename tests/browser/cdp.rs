//! A small Chrome DevTools Protocol client for the browser tests: it starts
//! Debian's `chromium` headless with a throwaway profile, opens one isolated
//! browser context (its own cookies and localStorage, like a separate
//! person's browser) per [`Page`], and drives each page with real input
//! events — mouse clicks at an element's centre and key presses — so the page
//! sees what a person's browser would send it.
//!
//! It speaks CDP over the `tungstenite` WebSocket client the server already
//! depends on, one socket per page, every call blocking with a deadline.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use crate::support::TempDir;

/// How long one DevTools call may take before the test fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a test waits for the page to reach a state by default.
pub const WAIT: Duration = Duration::from_secs(10);
/// How often a condition is checked while waiting for it.
const POLL: Duration = Duration::from_millis(15);
/// The desktop window every page starts with.
pub const DESKTOP: (u32, u32) = (1280, 800);

/// Where screenshots go: `target/browser-shots/`, outside the source tree.
pub fn shots_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("browser-shots")
}

/// The Chromium to drive: `$CHROMIUM` if set, else the first of the usual
/// names found on `PATH`.
fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    [
        "chromium",
        "chromium-browser",
        "google-chrome-stable",
        "google-chrome",
    ]
    .iter()
    .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
    .find(|candidate| candidate.is_file())
}

/// A headless Chromium process with its own profile; killed when dropped.
pub struct Browser {
    socket: Socket,
    port: u16,
    process: Process,
    // Declared after the process so the profile outlives it.
    _profile: TempDir,
    // Last: the next test's browser starts only once this one is gone.
    _turn: MutexGuard<'static, ()>,
}

/// Browser tests take turns. Ten Chromiums at once on a small CI machine
/// make every wait a race, and the timing tests measure the machine rather
/// than Parlor.
static TURN: Mutex<()> = Mutex::new(());

/// The browser's process, killed (if still running) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Browser {
    /// Starts Chromium, or returns None when it is not installed and this is
    /// not CI (the test then passes after saying loudly that it skipped).
    /// Under `CI=true` a missing browser fails the test.
    pub fn launch(test: &str) -> Option<Browser> {
        let Some(binary) = find_chromium() else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("chromium not found, and CI=true: install it (apt-get install chromium)");
            }
            // Straight to stderr: the test harness would hide eprintln!'s
            // output of a passing test.
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED: chromium not found: browser test {test} did not run. \
                 Install Debian's chromium (or set CHROMIUM=/path/to/chrome) to run it. ***\n"
            );
            return None;
        };
        // A test that failed while holding its turn poisons the lock; the
        // next test may still go.
        let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let profile = TempDir::new(&format!("chromium-{test}"));
        let log = std::fs::File::create(profile.path().join("chromium.log"))
            .expect("create the chromium log");
        let child = Command::new(&binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-breakpad",
                "--disable-crash-reporter",
                // Every simulated person's page is in its own window; none of
                // them may be slowed down as a background tab would be.
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                &format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
            ])
            .arg(format!(
                "--user-data-dir={}",
                profile.path().join("profile").display()
            ))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        // From here on a failure kills the browser on the way out.
        let mut process = Process(child);
        let (port, path) = wait_for_devtools(&mut process.0, profile.path())
            .unwrap_or_else(|problem| panic!("{problem}: {}", read_log(profile.path())));
        let socket = Socket::connect(port, &path);
        Some(Browser {
            socket,
            port,
            process,
            _profile: profile,
            _turn: turn,
        })
    }

    /// A new person: a fresh browser context (nothing stored, like a new
    /// profile) with one desktop-sized page in its own window. `name` labels
    /// screenshots and failures.
    pub fn new_person(&mut self, name: &str) -> Page {
        let context = self.socket.call("Target.createBrowserContext", json!({}));
        let context = context["browserContextId"].clone();
        let target = self.socket.call(
            "Target.createTarget",
            json!({
                "url": "about:blank",
                "browserContextId": context.clone(),
                "newWindow": true,
                "width": DESKTOP.0,
                "height": DESKTOP.1,
            }),
        );
        let target_id = target["targetId"]
            .as_str()
            .expect("a target id")
            .to_string();
        let mut socket = Socket::connect(self.port, &format!("/devtools/page/{target_id}"));
        socket.call("Page.enable", json!({}));
        socket.call("Runtime.enable", json!({}));
        socket.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": DESKTOP.0, "height": DESKTOP.1, "deviceScaleFactor": 1, "mobile": false}),
        );
        // Headless windows never have the OS focus; pretend they do, so
        // :focus-visible and focus events behave as on a desktop.
        socket.call(
            "Emulation.setFocusEmulationEnabled",
            json!({"enabled": true}),
        );
        Page {
            socket,
            name: name.to_string(),
            context,
        }
    }

    /// Lets `page`'s person's browser show notifications from `origin`
    /// without asking, as if they had said yes to the prompt.
    pub fn grant_notifications(&mut self, page: &Page, origin: &str) {
        self.socket.call(
            "Browser.grantPermissions",
            json!({
                "permissions": ["notifications"],
                "origin": origin,
                "browserContextId": page.context,
            }),
        );
    }
}

/// Chromium writes its DevTools port and browser endpoint to this file once
/// it listens.
fn wait_for_devtools(child: &mut Child, profile: &Path) -> Result<(u16, String), String> {
    let file = profile.join("profile").join("DevToolsActivePort");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            let mut lines = text.lines();
            if let (Some(Ok(port)), Some(path)) = (lines.next().map(str::parse), lines.next()) {
                return Ok((port, path.to_string()));
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("chromium exited at start ({status})"));
        }
        if Instant::now() >= deadline {
            return Err("chromium did not open its DevTools port within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_log(profile: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(profile.join("chromium.log")) {
        let _ = file.read_to_string(&mut text);
    }
    text
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ask politely so Chromium ends its helper processes too; `Process`
        // then kills it if it has not gone within 5 s.
        self.socket.send("Browser.close", json!({}));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.process.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One DevTools WebSocket with its command ids and the events that arrived
/// while waiting for replies.
struct Socket {
    ws: WebSocket<TcpStream>,
    next_id: u64,
    /// The text of every dialog the page opened, in order.
    dialogs: Vec<String>,
    /// Uncaught exceptions thrown in the page.
    exceptions: Vec<String>,
}

impl Socket {
    fn connect(port: u16, path: &str) -> Socket {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to chromium");
        stream
            .set_read_timeout(Some(CALL_TIMEOUT))
            .expect("set a read timeout");
        let (ws, _) = tungstenite::client(format!("ws://127.0.0.1:{port}{path}"), stream)
            .expect("DevTools WebSocket handshake");
        // From now on reads wake up often, so waits can keep their deadlines.
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("set a read timeout");
        Socket {
            ws,
            next_id: 0,
            dialogs: Vec::new(),
            exceptions: Vec::new(),
        }
    }

    /// Sends a command without waiting for its reply; returns its id.
    fn send(&mut self, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let frame = json!({"id": id, "method": method, "params": params});
        // A send to a closing browser or page may be lost (Drop and close
        // rely on that); a lost command then times out in `call`.
        let _ = self.ws.send(Message::text(frame.to_string()));
        id
    }

    /// Sends a command and returns its result; panics on a DevTools error.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .unwrap_or_else(|e| panic!("DevTools {method} failed: {e}"))
    }

    /// Sends a command and returns its result or the DevTools error.
    fn try_call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let id = self.send(method, params);
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let frame = self.read(deadline).unwrap_or_else(|| {
                panic!("no answer to DevTools {method} within {CALL_TIMEOUT:?}")
            });
            if frame["id"].as_u64() == Some(id) {
                if frame.get("error").is_some() {
                    return Err(frame["error"].to_string());
                }
                return Ok(frame["result"].clone());
            }
            self.on_event(&frame);
        }
    }

    /// Reads the next frame, or None once the deadline passed.
    fn read(&mut self, deadline: Instant) -> Option<Value> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    return Some(serde_json::from_str(&text).expect("DevTools sends JSON"));
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    if Instant::now() >= deadline {
                        return None;
                    }
                }
                Err(e) => panic!("DevTools socket failed: {e}"),
            }
        }
    }

    fn on_event(&mut self, frame: &Value) {
        let params = &frame["params"];
        match frame["method"].as_str() {
            Some("Page.javascriptDialogOpening") => {
                self.dialogs
                    .push(params["message"].as_str().unwrap_or_default().to_string());
                // The page should never open one (tests check `dialogs`);
                // dismiss it so the page goes on. The reply comes later and
                // is skipped as an unknown id.
                self.send("Page.handleJavaScriptDialog", json!({"accept": false}));
            }
            Some("Runtime.exceptionThrown") => {
                let details = &params["exceptionDetails"];
                let text = details["exception"]["description"]
                    .as_str()
                    .or(details["text"].as_str())
                    .unwrap_or("?");
                self.exceptions.push(text.to_string());
            }
            _ => {}
        }
    }
}

/// A key a test presses.
#[derive(Debug, Clone, Copy)]
pub enum Key {
    Enter,
    ShiftEnter,
    Tab,
    ShiftTab,
    ArrowDown,
    ArrowUp,
    Escape,
}

/// One person's page.
pub struct Page {
    socket: Socket,
    name: String,
    /// The browser context (the person's own profile) the page lives in.
    context: Value,
}

impl Page {
    /// Opens `url` and waits until the new document has loaded.
    pub fn goto(&mut self, url: &str) {
        self.navigate("Page.navigate", json!({"url": url}));
    }

    /// Reloads the page (a person pressing F5) and waits until the new
    /// document has loaded.
    pub fn reload(&mut self) {
        self.navigate("Page.reload", json!({}));
    }

    fn navigate(&mut self, method: &str, params: Value) {
        // A mark in the old document tells it apart from the new one, which
        // may not have replaced it yet when the command returns.
        self.eval("window.__oldDocument = true");
        let result = self.socket.call(method, params);
        assert!(
            result.get("errorText").is_none(),
            "{}: {method} failed: {result}",
            self.name
        );
        self.wait_for(
            "the new document to load",
            "!window.__oldDocument && document.readyState === 'complete'",
        );
    }

    /// Evaluates a JavaScript expression in the page and returns its value
    /// (promises are awaited). Panics if it throws.
    pub fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression)
            .unwrap_or_else(|e| panic!("{}: `{expression}` failed: {e}", self.name))
    }

    fn try_eval(&mut self, expression: &str) -> Result<Value, String> {
        let result = self.socket.try_call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(details) = result.get("exceptionDetails") {
            return Err(details["exception"]["description"]
                .as_str()
                .unwrap_or(&details.to_string())
                .to_string());
        }
        Ok(result["result"]["value"].clone())
    }

    /// The text content of the first element matching `selector` ("" if none).
    pub fn text(&mut self, selector: &str) -> String {
        let js = format!(
            "(document.querySelector({}) || {{}}).textContent || ''",
            js_string(selector)
        );
        self.eval(&js).as_str().unwrap_or_default().to_string()
    }

    /// Waits until `expression` is truthy and returns its value; on timeout
    /// saves a screenshot named after the failure and panics.
    pub fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        self.wait_for_within(WAIT, what, expression)
    }

    pub fn wait_for_within(&mut self, wait: Duration, what: &str, expression: &str) -> Value {
        match self.poll(wait, expression) {
            Some(value) => value,
            None => {
                let shot = format!("FAILED-{}", self.name);
                self.screenshot(&shot);
                let state = self
                    .try_eval(
                        "JSON.stringify({view: (document.getElementById('app')||{}).dataset, \
                         conn: (document.getElementById('conn')||{}).textContent, \
                         pos: (document.getElementById('page-pos')||{}).textContent, \
                         alert: (document.getElementById('chat-alert')||{}).textContent, \
                         focus: document.activeElement && document.activeElement.outerHTML.slice(0, 120)})",
                    )
                    .unwrap_or_else(Value::String);
                panic!(
                    "{}: timed out after {wait:?} waiting for {what} (`{expression}`); page state {state}; \
                     screenshot {}/{shot}.png",
                    self.name,
                    shots_dir().display()
                );
            }
        }
    }

    /// Polls `expression` until it is truthy (returning its value) or the
    /// wait is over (None). Evaluation errors while a page is loading count
    /// as not yet.
    pub fn poll(&mut self, wait: Duration, expression: &str) -> Option<Value> {
        let deadline = Instant::now() + wait;
        loop {
            if let Ok(value) = self.try_eval(expression)
                && truthy(&value)
            {
                return Some(value);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Clicks the centre of the first element matching `selector` with the
    /// mouse, after scrolling it into view. Fails if the element is hidden,
    /// disabled, or covered by another element at that point.
    pub fn click(&mut self, selector: &str) {
        let js = format!(
            r#"(() => {{
                const el = document.querySelector({sel});
                if (!el) return {{error: 'no element'}};
                el.scrollIntoView({{block: 'nearest', inline: 'nearest'}});
                const r = el.getBoundingClientRect();
                if (r.width === 0 || r.height === 0) return {{error: 'not visible'}};
                if (el.disabled) return {{error: 'disabled'}};
                const x = r.left + r.width / 2, y = r.top + r.height / 2;
                const hit = document.elementFromPoint(x, y);
                if (!hit || !(hit === el || el.contains(hit))) {{
                    return {{error: 'covered by ' + (hit ? hit.outerHTML.slice(0, 80) : 'nothing')}};
                }}
                return {{x, y}};
            }})()"#,
            sel = js_string(selector)
        );
        let point = self.eval(&js);
        if let Some(error) = point.get("error") {
            self.screenshot(&format!("FAILED-{}", self.name));
            panic!("{}: cannot click {selector}: {error}", self.name);
        }
        let (x, y) = (point["x"].clone(), point["y"].clone());
        self.mouse("mouseMoved", &x, &y);
        self.mouse("mousePressed", &x, &y);
        self.mouse("mouseReleased", &x, &y);
    }

    fn mouse(&mut self, kind: &str, x: &Value, y: &Value) {
        self.socket.call(
            "Input.dispatchMouseEvent",
            json!({"type": kind, "x": x, "y": y, "button": "left", "buttons": 1, "clickCount": 1}),
        );
    }

    /// Types `text` into the focused element one key at a time, as a
    /// person at a keyboard would (a `\n` is typed as Shift+Enter).
    pub fn type_text(&mut self, text: &str) {
        for ch in text.chars() {
            if ch == '\n' {
                self.press(Key::ShiftEnter);
                continue;
            }
            let s = ch.to_string();
            self.socket.call(
                "Input.dispatchKeyEvent",
                json!({"type": "keyDown", "key": s, "text": s, "unmodifiedText": s}),
            );
            self.socket
                .call("Input.dispatchKeyEvent", json!({"type": "keyUp", "key": s}));
        }
    }

    /// Presses and releases one key.
    pub fn press(&mut self, key: Key) {
        const SHIFT: u32 = 8;
        let (name, code, text, modifiers) = match key {
            Key::Enter => ("Enter", 13, Some("\r"), 0),
            Key::ShiftEnter => ("Enter", 13, Some("\r"), SHIFT),
            Key::Tab => ("Tab", 9, None, 0),
            Key::ShiftTab => ("Tab", 9, None, SHIFT),
            Key::ArrowDown => ("ArrowDown", 40, None, 0),
            Key::ArrowUp => ("ArrowUp", 38, None, 0),
            Key::Escape => ("Escape", 27, None, 0),
        };
        let mut down = json!({
            "type": if text.is_some() { "keyDown" } else { "rawKeyDown" },
            "key": name, "code": name, "modifiers": modifiers,
            "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code,
        });
        if let Some(text) = text {
            down["text"] = json!(text);
            down["unmodifiedText"] = json!(text);
        }
        self.socket.call("Input.dispatchKeyEvent", down);
        self.socket.call(
            "Input.dispatchKeyEvent",
            json!({
                "type": "keyUp", "key": name, "code": name, "modifiers": modifiers,
                "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code,
            }),
        );
    }

    /// The text of every dialog the page has opened so far.
    pub fn dialogs(&self) -> &[String] {
        &self.socket.dialogs
    }

    /// Fails the test if the page threw an uncaught exception.
    pub fn assert_no_exceptions(&self) {
        assert!(
            self.socket.exceptions.is_empty(),
            "{}: the page threw: {:?}",
            self.name,
            self.socket.exceptions
        );
    }

    /// Resizes the viewport (for example to a 360 px phone).
    pub fn set_viewport(&mut self, width: u32, height: u32, mobile: bool) {
        self.socket.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        );
    }

    /// Cuts the page off the network (Chromium's offline mode: open
    /// sockets close, new ones fail) or gives it back.
    pub fn set_offline(&mut self, offline: bool) {
        self.socket.call("Network.enable", json!({}));
        self.socket.call(
            "Network.emulateNetworkConditions",
            json!({"offline": offline, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}),
        );
    }

    /// Runs `source` in every document this page loads from now on, before
    /// the page's own scripts.
    pub fn add_init_script(&mut self, source: &str) {
        self.socket.call(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({"source": source}),
        );
    }

    /// Makes the page's clocks and dates use this IANA time zone.
    pub fn set_timezone(&mut self, zone: &str) {
        self.socket
            .call("Emulation.setTimezoneOverride", json!({"timezoneId": zone}));
    }

    /// The role, accessible name and description Chromium gives the first
    /// element matching `selector`: what a screen reader is told.
    pub fn accessible(&mut self, selector: &str) -> Value {
        let found = self.socket.call(
            "Runtime.evaluate",
            json!({"expression": format!("document.querySelector({})", js_string(selector))}),
        );
        let Some(object) = found["result"]["objectId"].as_str() else {
            panic!("{}: no element {selector}", self.name);
        };
        let object = object.to_string();
        self.socket.call("Accessibility.enable", json!({}));
        let tree = self.socket.call(
            "Accessibility.getPartialAXTree",
            json!({"objectId": object, "fetchRelatives": false}),
        );
        let node = &tree["nodes"][0];
        json!({
            "role": node["role"]["value"],
            "name": node["name"]["value"],
            "description": node["description"]["value"],
        })
    }

    /// Makes the page believe its window is hidden and unfocused (true),
    /// as when a person looks at another window, or shown and focused
    /// again (false). Headless Chromium has no other windows to look at:
    /// every window reports itself visible and focused, so the page's view
    /// of it is overridden and the matching events are sent.
    pub fn set_hidden(&mut self, hidden: bool) {
        let js = if hidden {
            "Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'hidden'});
             Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});
             document.hasFocus = () => false;
             window.dispatchEvent(new Event('blur'));
             document.dispatchEvent(new Event('visibilitychange'));
             true"
        } else {
            "delete document.visibilityState; delete document.hidden; delete document.hasFocus;
             document.dispatchEvent(new Event('visibilitychange'));
             window.dispatchEvent(new Event('focus'));
             true"
        };
        self.eval(js);
    }

    /// Emulates the system's light or dark preference.
    pub fn set_color_scheme(&mut self, scheme: &str) {
        self.socket.call(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": scheme}]}),
        );
    }

    /// Saves a PNG of the viewport as `target/browser-shots/<name>.png`.
    pub fn screenshot(&mut self, name: &str) {
        let Ok(result) = self
            .socket
            .try_call("Page.captureScreenshot", json!({"format": "png"}))
        else {
            return; // a screenshot is for people; never the reason a test fails
        };
        let Some(data) = result["data"].as_str() else {
            return;
        };
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("DevTools sends base64");
        let dir = shots_dir();
        std::fs::create_dir_all(&dir).expect("create the screenshot directory");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("save the screenshot");
    }

    /// Closes the page, as a person closing the tab.
    pub fn close(mut self) {
        // The page goes away with its socket, so the reply may never come.
        self.socket.send("Page.close", json!({}));
    }
}

/// A JavaScript string literal for `s`.
pub fn js_string(s: &str) -> String {
    serde_json::to_string(s).expect("BUG: a string always serializes")
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}
