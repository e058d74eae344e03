//! `escrow new`: write a plugin crate that builds for `wasm32-wasip2`, with
//! the grants it needs and a native test.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

mod templates;

/// Write a new plugin in the directory NAME.
///
/// In Rust, a `cdylib` crate using escrow-guest, with the 64 KiB guest
/// stack in its own `.cargo/config.toml`; in Python, a module with a
/// Makefile (componentize-py); in JavaScript, a module with a
/// `package.json` (componentize-js). Each has an `escrow.toml` granting
/// exactly what it requests and a native test that runs under those grants;
/// its README says how to build it and run it with `escrow run`.
#[derive(Debug, Args)]
pub(crate) struct NewArgs {
    /// The plugin's name, a crate name (`orders`, `fraud-check`); the
    /// directory of that name must not exist.
    name: String,
    /// The plugin's language.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    lang: Lang,
    /// Depend on this escrow-guest instead of the one this binary was
    /// built with: the crate's directory (Rust); the package's directory or
    /// a built wheel (Python) or tarball (JavaScript).
    #[arg(long, value_name = "PATH")]
    sdk_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Lang {
    Rust,
    Python,
    #[value(name = "javascript", alias = "js")]
    JavaScript,
}

pub(crate) fn main(args: NewArgs) -> anyhow::Result<u8> {
    let name = &args.name;
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!("`{name}` is not a crate name: use lowercase letters, digits, `-` and `_`");
    }
    let dir = Path::new(name);
    if dir.exists() {
        bail!("`{name}` exists already; choose another name or remove it");
    }
    let sdk_path = match &args.sdk_path {
        Some(path) => Some(
            path.canonicalize()
                .with_context(|| format!("--sdk-path `{}`", path.display()))?,
        ),
        None => None,
    };
    let (files, sdk, build) = match args.lang {
        Lang::Rust => {
            let sdk = sdk_path.map_or_else(Sdk::built_with, Sdk::Path);
            let files = vec![
                ("Cargo.toml", cargo_toml(name, &sdk.dependency())),
                (".cargo/config.toml", CARGO_CONFIG.to_owned()),
                ("src/lib.rs", lib_rs(name)),
                ("escrow.toml", ESCROW_TOML.to_owned()),
                ("README.md", readme(name)),
                (".gitignore", "/target\n".to_owned()),
            ];
            let build = "cargo build --release --target wasm32-wasip2";
            (files, sdk.to_string(), build)
        }
        Lang::Python => {
            let sdk = sdk_path.or_else(|| checkout_sdk("python"));
            let files = templates::python(name, sdk.as_deref(), ESCROW_TOML);
            (files, templates::described(sdk.as_deref()), "make")
        }
        Lang::JavaScript => {
            let sdk = sdk_path.or_else(|| checkout_sdk("js"));
            let files = templates::javascript(name, sdk.as_deref(), ESCROW_TOML);
            (
                files,
                templates::described(sdk.as_deref()),
                "npm install && npm run build",
            )
        }
    };
    for (file, text) in files {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().expect("a file in a directory"))
            .with_context(|| format!("cannot create `{}`", dir.display()))?;
        std::fs::write(&path, text)
            .with_context(|| format!("cannot write `{}`", path.display()))?;
    }
    eprintln!(
        "escrow: wrote the plugin `{name}`, using {sdk}; build it with\n  cd {name} && {build}"
    );
    Ok(0)
}

/// The checkout's helper package for a language (`guest-sdk/python`,
/// `guest-sdk/js`), while the checkout this binary was built from is still
/// there.
fn checkout_sdk(language: &str) -> Option<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../guest-sdk")
        .join(language)
        .canonicalize()
        .ok()
}

/// Where the new crate gets escrow-guest from.
#[derive(Debug)]
enum Sdk {
    /// The crate in this directory.
    Path(PathBuf),
    /// The release of this version in the crates registry.
    Release(&'static str),
}

impl Sdk {
    /// The SDK this binary was built with: the checkout's `guest-sdk` while
    /// it is still where it was built from, else the release of the same
    /// version (as when the binary was installed from the registry).
    fn built_with() -> Sdk {
        let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk");
        match checkout.join("Cargo.toml").canonicalize() {
            Ok(manifest) => Sdk::Path(manifest.parent().expect("a file in a directory").into()),
            Err(_) => Sdk::Release(env!("CARGO_PKG_VERSION")),
        }
    }

    /// The dependency's value in `Cargo.toml`.
    fn dependency(&self) -> String {
        match self {
            Sdk::Path(path) => {
                let path = toml::Value::String(path.display().to_string());
                format!("{{ path = {path} }}")
            }
            Sdk::Release(version) => format!("\"{version}\""),
        }
    }
}

impl std::fmt::Display for Sdk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sdk::Path(path) => write!(f, "escrow-guest from `{}`", path.display()),
            Sdk::Release(version) => write!(f, "escrow-guest {version} from crates.io"),
        }
    }
}

fn cargo_toml(name: &str, sdk: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

# A workspace of its own, wherever the crate is written. To make it a member
# of an enclosing workspace instead, remove this table and list the crate
# in that workspace's `members`.
[workspace]

[dependencies]
escrow-guest = {sdk}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

[profile.release]
strip = "debuginfo"
"#
    )
}

/// A 64 KiB guest stack instead of Rust's 1 MiB: it sits with the data in
/// the pages the host keeps resident, so each run faults in fewer pages.
const CARGO_CONFIG: &str = r#"# A 64 KiB stack instead of Rust's default 1 MiB: it sits with the data in
# the first pages of linear memory, which the host keeps resident between
# runs, so each run costs less.
[target.wasm32-wasip2]
rustflags = ["-C", "link-arg=-zstack-size=65536"]
"#;

const ESCROW_TOML: &str = r#"# What the plugin may do: exactly the effects it requests.
policy = "commit"

[grants]
effects = ["orders.save", "email.send"]

[limits]
timeout_ms = 2000
max_intents = 100
"#;

fn lib_rs(name: &str) -> String {
    format!(
        r#"//! {name}: an escrow plugin. Every effect it requests is held in escrow
//! and happens only if the run succeeds.

use serde::{{Deserialize, Serialize}};

/// What the plugin is asked to do.
#[derive(Debug, Deserialize)]
pub struct Order {{
    /// The order's id.
    pub id: u64,
    /// Where the confirmation goes.
    pub email: String,
}}

/// What it answers.
#[derive(Debug, Serialize)]
pub struct Saved {{
    /// The order saved.
    pub order: u64,
}}

/// Saves the order and confirms it by email, both deferred.
#[escrow_guest::plugin]
pub fn save_order(order: Order) -> Result<Saved, escrow_guest::Error> {{
    if order.email.is_empty() {{
        return Err(escrow_guest::Error::msg("an order needs an email address"));
    }}
    escrow_guest::defer("orders.save", &order.id)?;
    escrow_guest::defer("email.send", &order.email)?;
    Ok(Saved {{ order: order.id }})
}}

#[cfg(test)]
mod tests {{
    use super::*;
    use escrow_guest::testing::Sandbox;

    /// The grants of `escrow.toml`, as production runs get them.
    fn sandbox() -> Sandbox {{
        Sandbox::from_config(concat!(env!("CARGO_MANIFEST_DIR"), "/escrow.toml"))
    }}

    #[test]
    fn an_order_is_saved_then_confirmed() {{
        let order = Order {{ id: 7, email: "ada@example.com".into() }};
        let recording = sandbox().run(|| save_order(order));
        assert_eq!(recording.output.as_ref().unwrap().order, 7);
        assert_eq!(recording.committed_effects(), ["orders.save", "email.send"]);
    }}

    #[test]
    fn an_order_without_an_email_fails_and_requests_nothing() {{
        let order = Order {{ id: 7, email: String::new() }};
        let recording = sandbox().run(|| save_order(order));
        assert!(recording.output.is_err());
        assert!(recording.intents.is_empty());
    }}
}}
"#
    )
}

fn readme(name: &str) -> String {
    let wasm = name.replace('-', "_");
    format!(
        r#"# {name}

An escrow plugin: it saves an order and confirms it by email, both held in
escrow until the run succeeds.

```sh
cargo test                                              # native tests, under escrow.toml's grants
cargo build --release --target wasm32-wasip2            # the component
escrow run target/wasm32-wasip2/release/{wasm}.wasm --config escrow.toml \
    --input '{{"id": 7, "email": "ada@example.com"}}'
```

`escrow.toml` grants exactly the effects the plugin requests; anything else
is refused. `.cargo/config.toml` gives the guest a 64 KiB stack, which makes
each run cheaper.
"#
    )
}
