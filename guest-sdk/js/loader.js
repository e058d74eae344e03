// The module resolution hook register.js installs: escrow's WIT interfaces,
// which only a component can import, come from native.js.
const NATIVE = new URL('./native.js', import.meta.url).href;

export async function resolve(specifier, context, nextResolve) {
  if (specifier.startsWith('escrow:host/')) {
    return { url: NATIVE, shortCircuit: true };
  }
  return nextResolve(specifier, context);
}
