//! The Python and JavaScript plugins `escrow new --lang` writes: the module,
//! a native test under the language's own test runner, escrow's WIT, the
//! grants, and the build, each depending on the helper package
//! (`escrow-guest`) and the pinned toolchain.

use std::path::Path;

/// escrow's WIT, as this binary's host speaks it: the plugin is built
/// against exactly this.
const ESCROW_WIT: &str = include_str!("../../../wit/escrow.wit");

/// The toolchains the templates pin, as `guest-sdk` pins them for escrow's
/// own tests (a test checks that they agree).
const COMPONENTIZE_PY: &str = "0.25.1";
const PYTEST: &str = "9.2.0";
const COMPONENTIZE_JS: &str = "0.23.0";
const PREVIEW2_SHIM: &str = "0.25.0";

/// The version of `escrow-guest` to ask a registry for when no package is
/// given: this binary's.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How the summary names the helper package used.
pub(super) fn described(sdk: Option<&Path>) -> String {
    match sdk {
        Some(path) => format!("escrow-guest from `{}`", path.display()),
        None => format!("escrow-guest {VERSION} from the registry"),
    }
}

type Files = Vec<(&'static str, String)>;

/// A Python plugin: `app.py`, `test_app.py`, the pins and a Makefile.
pub(super) fn python(name: &str, sdk: Option<&Path>, grants: &str) -> Files {
    let helper = match sdk {
        Some(path) => format!("escrow-guest @ file://{}", path.display()),
        None => format!("escrow-guest=={VERSION}"),
    };
    vec![
        ("app.py", python_app(name)),
        ("test_app.py", PYTHON_TEST.to_owned()),
        (
            "requirements.txt",
            format!("componentize-py=={COMPONENTIZE_PY}\npytest=={PYTEST}\n{helper}\n"),
        ),
        ("Makefile", PYTHON_MAKEFILE.to_owned()),
        ("wit/escrow.wit", ESCROW_WIT.to_owned()),
        ("escrow.toml", grants.to_owned()),
        ("README.md", python_readme(name)),
        (".gitignore", "/.venv\n/app.wasm\n__pycache__/\n".to_owned()),
    ]
}

fn python_app(name: &str) -> String {
    format!(
        r#""""{name}: an escrow plugin. Every effect it requests is held in escrow
and happens only if the run succeeds."""

from escrow_guest import PluginError, defer, plugin


@plugin
def save_order(order):
    """Saves the order and confirms it by email, both deferred."""
    if not order.get("email"):
        raise PluginError("an order needs an email address")
    defer("orders.save", order["id"])
    defer("email.send", order["email"])
    return {{"order": order["id"]}}
"#
    )
}

const PYTHON_TEST: &str = r#""""The plugin's logic, natively, under the grants of escrow.toml."""

from pathlib import Path

from escrow_guest.testing import Sandbox

from app import save_order


def sandbox():
    return Sandbox.from_config(Path(__file__).with_name("escrow.toml"))


def test_an_order_is_saved_then_confirmed():
    recording = sandbox().run(save_order, {"id": 7, "email": "ada@example.com"})
    assert recording.output == {"order": 7}
    assert recording.committed_effects() == ["orders.save", "email.send"]


def test_an_order_without_an_email_fails_and_requests_nothing():
    recording = sandbox().run(save_order, {"id": 7, "email": ""})
    assert recording.status == "failed"
    assert recording.error == "an order needs an email address"
    assert recording.intents == []
"#;

const PYTHON_MAKEFILE: &str = r#"# make: the component; make test: the native tests; make run: both, then
# the component under escrow.toml's grants (needs `escrow` on the PATH).

app.wasm: app.py .venv
	. .venv/bin/activate && componentize-py -d wit -w plugin componentize app -o app.wasm

.venv: requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch .venv

test: .venv
	.venv/bin/python -m pytest -q

run: test app.wasm
	escrow run app.wasm --config escrow.toml --input '{"id": 7, "email": "ada@example.com"}'

.PHONY: test run
"#;

fn python_readme(name: &str) -> String {
    format!(
        r#"# {name}

An escrow plugin in Python: it saves an order and confirms it by email,
both held in escrow until the run succeeds.

```sh
make test      # native tests under escrow.toml's grants (pytest, no component build)
make           # the component, app.wasm (componentize-py)
escrow run app.wasm --config escrow.toml --input '{{"id": 7, "email": "ada@example.com"}}'
```

`escrow.toml` grants exactly the effects the plugin requests; anything else
is refused. `wit/escrow.wit` is the interface of the escrow that wrote this
directory; `requirements.txt` pins the toolchain and the helper package.
"#
    )
}

/// A JavaScript plugin: `app.js`, `app.test.js` and `package.json`.
pub(super) fn javascript(name: &str, sdk: Option<&Path>, grants: &str) -> Files {
    let helper = match sdk {
        Some(path) => format!("file:{}", path.display()),
        None => VERSION.to_owned(),
    };
    let package = serde_json::json!({
        "name": name,
        "version": "0.1.0",
        "private": true,
        "type": "module",
        "scripts": {
            "build": "node --import escrow-guest/register node_modules/escrow-guest/check.js app.js && componentize-js app.js -w wit -n plugin -o app.wasm",
            "test": "node --import escrow-guest/register --test",
        },
        "dependencies": { "escrow-guest": helper },
        "devDependencies": {
            "@bytecodealliance/componentize-js": COMPONENTIZE_JS,
            "@bytecodealliance/preview2-shim": PREVIEW2_SHIM,
        },
    });
    vec![
        ("app.js", javascript_app(name)),
        ("app.test.js", JAVASCRIPT_TEST.to_owned()),
        ("package.json", format!("{package:#}\n")),
        ("wit/escrow.wit", ESCROW_WIT.to_owned()),
        ("escrow.toml", grants.to_owned()),
        ("README.md", javascript_readme(name)),
        (".gitignore", "/node_modules\n/app.wasm\n".to_owned()),
    ]
}

fn javascript_app(name: &str) -> String {
    format!(
        r#"// {name}: an escrow plugin. Every effect it requests is held in escrow
// and happens only if the run succeeds.
//
// The helper is imported by its path: the component's JavaScript engine
// resolves relative paths only.
import {{ defer, plugin }} from './node_modules/escrow-guest/escrow.js';

/** Saves the order and confirms it by email, both deferred. */
export const run = plugin((order) => {{
  if (!order.email) throw new Error('an order needs an email address');
  defer('orders.save', order.id);
  defer('email.send', order.email);
  return {{ order: order.id }};
}});
"#
    )
}

const JAVASCRIPT_TEST: &str = r#"// The plugin's logic, natively, under the grants of escrow.toml
// (`npm test`: node --import escrow-guest/register --test).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Sandbox } from 'escrow-guest/testing';

import { run } from './app.js';

const sandbox = () => Sandbox.fromConfig(new URL('./escrow.toml', import.meta.url));

test('an order is saved then confirmed', () => {
  const recording = sandbox().run(run, { id: 7, email: 'ada@example.com' });
  assert.deepEqual(recording.output, { order: 7 });
  assert.deepEqual(recording.committedEffects(), ['orders.save', 'email.send']);
});

test('an order without an email fails and requests nothing', () => {
  const recording = sandbox().run(run, { id: 7, email: '' });
  assert.equal(recording.status, 'failed');
  assert.equal(recording.error, 'an order needs an email address');
  assert.deepEqual(recording.intents, []);
});
"#;

fn javascript_readme(name: &str) -> String {
    format!(
        r#"# {name}

An escrow plugin in JavaScript: it saves an order and confirms it by
email, both held in escrow until the run succeeds.

```sh
npm install
npm test         # native tests under escrow.toml's grants (node --test, no component build)
npm run build    # the component, app.wasm (componentize-js)
escrow run app.wasm --config escrow.toml --input '{{"id": 7, "email": "ada@example.com"}}'
```

`escrow.toml` grants exactly the effects the plugin requests; anything else
is refused. `wit/escrow.wit` is the interface of the escrow that wrote this
directory; `package.json` pins the toolchain and the helper package.
"#
    )
}
