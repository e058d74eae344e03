//! The `#[plugin]` entry-point macro of `escrow-guest`.
//!
//! It checks the function's shape and reports a mistake at the user's line,
//! then exports the function as the component's `run` on `wasm32`.

use proc_macro::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, ReturnType, Type, parse_macro_input};

/// Marks the plugin's entry point. See `escrow_guest::plugin` for the docs.
#[proc_macro_attribute]
pub fn plugin(attr: TokenStream, item: TokenStream) -> TokenStream {
    let bytes = match parse_mode(attr.into()) {
        Ok(bytes) => bytes,
        Err(error) => return error.to_compile_error().into(),
    };
    let function = parse_macro_input!(item as ItemFn);
    match expand(function, bytes) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// `#[plugin]` or `#[plugin(bytes)]`.
fn parse_mode(attr: proc_macro2::TokenStream) -> syn::Result<bool> {
    if attr.is_empty() {
        return Ok(false);
    }
    let ident: syn::Ident = syn::parse2(attr.clone())
        .map_err(|_| syn::Error::new(attr.span(), "expected `#[plugin]` or `#[plugin(bytes)]`"))?;
    if ident == "bytes" {
        Ok(true)
    } else {
        Err(syn::Error::new(
            ident.span(),
            "expected `#[plugin]` or `#[plugin(bytes)]`",
        ))
    }
}

fn expand(function: ItemFn, bytes: bool) -> syn::Result<proc_macro2::TokenStream> {
    let sig = &function.sig;
    let shape = "a plugin is `fn name(input: Input) -> Result<Output, Error>` (or a `Result<Output>` alias such as `anyhow::Result<Output>`)";
    if let Some(asyncness) = &sig.asyncness {
        return Err(syn::Error::new(
            asyncness.span(),
            format!("a plugin cannot be async; {shape}"),
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.span(),
            format!("a plugin cannot be generic; {shape}"),
        ));
    }
    if sig.inputs.len() != 1 {
        let span = if sig.inputs.is_empty() {
            sig.paren_token.span.join()
        } else {
            sig.inputs.span()
        };
        return Err(syn::Error::new(
            span,
            format!(
                "a plugin takes exactly one argument, found {}; {shape}",
                sig.inputs.len()
            ),
        ));
    }
    let input_ty = match &sig.inputs[0] {
        FnArg::Typed(arg) => &arg.ty,
        FnArg::Receiver(receiver) => {
            return Err(syn::Error::new(
                receiver.span(),
                format!("a plugin cannot take `self`; {shape}"),
            ));
        }
    };
    let (ok_ty, err_ty, return_ty) = match &sig.output {
        ReturnType::Type(_, ty) => {
            result_types(ty)
                .map(|(ok, err)| (ok, err, ty))
                .ok_or_else(|| {
                    syn::Error::new(
                        ty.span(),
                        format!("a plugin returns `Result<Output, Error>`; {shape}"),
                    )
                })?
        }
        ReturnType::Default => {
            return Err(syn::Error::new(
                sig.ident.span(),
                format!("a plugin returns `Result<Output, Error>`; {shape}"),
            ));
        }
    };

    let name = &sig.ident;
    let private = quote!(::escrow_guest::__private);
    // Each bound is checked at the user's own type, so a missing impl is
    // reported there and not inside generated code.
    let (checks, call) = if bytes {
        let input_check = quote_spanned!(input_ty.span()=> let _: ::std::marker::PhantomData<#input_ty> = ::std::marker::PhantomData::<::std::vec::Vec<u8>>;);
        let output_check = quote_spanned!(ok_ty.span()=> let _: ::std::marker::PhantomData<#ok_ty> = ::std::marker::PhantomData::<::std::vec::Vec<u8>>;);
        (
            quote!(#input_check #output_check),
            quote!(#private::call_bytes(&input, #name)),
        )
    } else {
        let input_check = quote_spanned!(input_ty.span()=> { fn input<T: #private::DeserializeOwned>() {} input::<#input_ty>(); });
        let output_check = quote_spanned!(ok_ty.span()=> { fn output<T: #private::Serialize>() {} output::<#ok_ty>(); });
        (
            quote!(#input_check #output_check),
            quote!(#private::call_json(&input, #name)),
        )
    };
    let error_check = match err_ty {
        Some(err_ty) => {
            quote_spanned!(err_ty.span()=> { fn error<T: ::std::fmt::Display>() {} error::<#err_ty>(); })
        }
        // An alias (`anyhow::Result<T>`): its error type is checked through
        // the alias, still at the user's return type.
        None => {
            quote_spanned!(return_ty.span()=> #private::check_result(::std::marker::PhantomData::<#return_ty>);)
        }
    };

    Ok(quote! {
        // On native targets the function is only called by tests.
        #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
        #function

        // Checked on every target, so a native `cargo test` reports a wrong
        // type as early as a wasm build would.
        const _: () = {
            #[allow(dead_code, reason = "only type-checked")]
            fn __escrow_checks() { #checks #error_check }
        };

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __EscrowPlugin;

            impl #private::Guest for __EscrowPlugin {
                fn run(input: ::std::vec::Vec<u8>) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                    #call
                }
            }

            #private::export!(__EscrowPlugin with_types_in #private::bindings);
        };
    })
}

/// The `T` and `E` of a return type spelled `Result<T, E>` (any path ending
/// in `Result`), or the `T` of an alias spelled `Result<T>`.
fn result_types(ty: &Type) -> Option<(&Type, Option<&Type>)> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|arg| match arg {
        syn::GenericArgument::Type(ty) => Some(ty),
        _ => None,
    });
    match (types.next(), types.next(), types.next()) {
        (Some(ok), Some(err), None) => Some((ok, Some(err))),
        (Some(ok), None, None) => Some((ok, None)),
        _ => None,
    }
}
