// The model image's last build step (infra/docker/build-model-image.sh): the addon it ships must
// load in this Node, carry the CUDA kernels, and ask the CUDA runtime for a device. Where there is
// no GPU (a docker build, CI) that last step fails with the engine's typed NotAvailableError
// "no CUDA device: ...", which proves the whole path up to the driver; where there is one, the probe
// engine is created. Anything else (missing file, loader error, stub build, another error class) is
// a broken image: one JSON line on stdout either way, exit 1 when broken.
//   node --import tsx infra/docker/check-addon.ts
import { NotAvailableError } from "../../core/errors.ts";
import { Backend } from "../../native/ts/abi.ts";
import { addonPath, loadAddonHost } from "../../native/ts/addon-host.ts";
import { probeCudaError } from "../../native/ts/cuda-runtime.ts";

function report(ok: boolean, fields: Record<string, unknown>): never {
  process.stdout.write(`${JSON.stringify({ ok, addon: addonPath(), ...fields })}\n`);
  process.exit(ok ? 0 : 1);
}

let host: ReturnType<typeof loadAddonHost>;
try {
  host = loadAddonHost();
} catch (err) {
  report(false, { error: (err as Error).message });
}
if (!host.backendCompiled(Backend.cuda)) {
  report(false, { cudaCompiled: false, error: "the addon was linked without the CUDA kernels" });
}
const err = probeCudaError(host);
if (err === null) report(true, { cudaCompiled: true, device: "available" });
const noDevice = err instanceof NotAvailableError && /\bno CUDA device: /.test(err.message);
report(noDevice, {
  cudaCompiled: true,
  device: "none",
  errorClass: err.constructor.name,
  error: err.message,
});
