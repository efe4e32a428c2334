//! axe-core, the accessibility checker, run inside the page: its
//! `axe.min.js` comes from the npm package pinned in
//! `tests/browser/package.json` (`npm ci` there; `.ci/run` does it) and is
//! injected through DevTools, so the page's Content-Security-Policy stays as
//! it is served.

use std::io::Write;
use std::sync::OnceLock;

use serde_json::Value;

use crate::cdp::{Page, shots_dir};

const AXE_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/browser/node_modules/axe-core/axe.min.js"
);

/// The axe-core script, or None when it is not installed and this is not
/// CI (the check is then skipped with a loud notice). Under `CI=true` a
/// missing axe-core fails the test.
fn script() -> Option<&'static str> {
    static SCRIPT: OnceLock<Option<String>> = OnceLock::new();
    SCRIPT
        .get_or_init(|| match std::fs::read_to_string(AXE_PATH) {
            Ok(text) => Some(text),
            Err(e) => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("axe-core not found at {AXE_PATH} ({e}), and CI=true: run `npm ci` in tests/browser");
                }
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** SKIPPED: axe-core not found at {AXE_PATH}: accessibility checks did not run. \
                     Run `npm ci` in tests/browser to install it. ***\n"
                );
                None
            }
        })
        .as_deref()
}

/// Runs axe-core on the page as it is now and returns every violation
/// (`id`, `impact`, `help`, the first `nodes`), or None when axe-core is
/// not installed outside CI.
pub fn violations(page: &mut Page) -> Option<Vec<Value>> {
    let script = script()?;
    if page.eval("typeof window.axe === 'object'") != true {
        page.eval(&format!("{script};\ntrue"));
    }
    let found = page.eval(
        "(async () => {
            const result = await axe.run(document, { resultTypes: ['violations'] });
            return result.violations.map((v) => ({
                id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.slice(0, 6).map((n) => n.target.join(' ') + ' — ' + (n.failureSummary || '').replace(/\\s+/g, ' ')),
            }));
        })()",
    );
    Some(found.as_array().cloned().unwrap_or_default())
}

/// Runs axe-core on the page as it is now and fails the test on any serious
/// or critical violation, listing them. `state` names the screenshot
/// (`target/browser-shots/axe-<state>.png`). Lesser findings are printed.
pub fn check(page: &mut Page, state: &str) {
    page.screenshot(&format!("axe-{state}"));
    let Some(violations) = violations(page) else {
        return;
    };
    let (bad, minor): (Vec<Value>, Vec<Value>) = violations
        .into_iter()
        .partition(|v| v["impact"] == "serious" || v["impact"] == "critical");
    for v in &minor {
        eprintln!("axe {state}: {} ({}): {}", v["id"], v["impact"], v["nodes"]);
    }
    assert!(
        bad.is_empty(),
        "axe-core found serious or critical problems in state {state} (screenshot {}/axe-{state}.png):\n{}",
        shots_dir().display(),
        serde_json::to_string_pretty(&bad).expect("BUG: JSON values always serialize")
    );
}
