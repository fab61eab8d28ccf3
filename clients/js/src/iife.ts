/**
 * The entry of the `<script>` bundle (`dist/herald.min.js`): sets the global
 * `Herald` to the client class, with the module's other exports
 * (`HeraldError`, `Subscription`, `closeAction`…) as its properties, so that
 * `new Herald({ … })` and `Herald.HeraldError` both work without a bundler.
 * `protocol: "msgpack"` imports `msgpack.js` from next to this script.
 * @module
 */

import * as sdk from "./herald.js";

(globalThis as { Herald?: unknown }).Herald = Object.assign(sdk.Herald, sdk);
