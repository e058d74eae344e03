// Lets node run plugin logic natively: every `escrow:host/...` import
// resolves to the sandbox of native.js instead of the host, so that
//
//     node --import ./guest-sdk/js/register.js --test
//
// runs a plugin's tests without building a component (testing.js).
import { register } from 'node:module';

register('./loader.js', import.meta.url);
