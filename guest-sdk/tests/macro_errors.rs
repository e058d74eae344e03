//! `#[plugin]` rejects a wrong signature with an error at the user's line.

#[test]
fn a_wrong_plugin_signature_is_a_spanned_compile_error() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
