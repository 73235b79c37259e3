// The snapshot master keys of this process, read the same way by every entry that builds a
// snapshot store (`ultralong serve` in both roles, the model container, `ultralong generate`):
//
//   ULTRALONG_SNAPSHOT_KEY       one key, or several separated by commas: hex (64+ chars) or
//                                base64 (32+ bytes) each. The FIRST seals new snapshots; every one
//                                opens the snapshots it sealed (rotation: put the new key first,
//                                keep the old one listed until its objects expire).
//   ULTRALONG_SNAPSHOT_KEY_FILE  the same, read from a file (commas or newlines), for a key that
//                                should not sit in the environment.
//   deployed: the stack's SnapshotKey secret, which ECS gives the model task alone as
//             ULTRALONG_SNAPSHOT_KEY (infra/deploy/stack.ts).
//
// A model function deployed on its own (`serve --role model`) with a store and no key refuses to
// start unless ULTRALONG_SNAPSHOT_PLAINTEXT=1 says plaintext is meant: KV snapshots in the clear can
// be edited by whoever can write the store, and change later answers.
import { readFile } from "node:fs/promises";
import { parseMasterKey } from "../../core/crypto/tenant-key.ts";
import { InvalidInputError } from "../../core/errors.ts";

type Env = Record<string, string | undefined>;

function parseList(text: string, from: string): Uint8Array[] {
  const parts = text
    .split(/[,\n]/)
    .map((p) => p.trim())
    .filter(Boolean);
  if (!parts.length) throw new InvalidInputError(`${from} holds no key`);
  return parts.map((p, i) => {
    try {
      return parseMasterKey(p);
    } catch (err) {
      throw new InvalidInputError(`${from}: key ${i + 1}: ${(err as Error).message}`);
    }
  });
}

/** The master keys from the environment, first = the one that seals; [] when none is set. */
export async function snapshotKeys(env: Env): Promise<Uint8Array[]> {
  const inline = env.ULTRALONG_SNAPSHOT_KEY;
  const file = env.ULTRALONG_SNAPSHOT_KEY_FILE;
  if (inline && file) {
    throw new InvalidInputError(
      "set ULTRALONG_SNAPSHOT_KEY or ULTRALONG_SNAPSHOT_KEY_FILE, not both",
    );
  }
  if (inline) return parseList(inline, "ULTRALONG_SNAPSHOT_KEY");
  if (file) {
    const text = await readFile(file, "utf8").catch((err: Error) => {
      throw new InvalidInputError(
        `cannot read ULTRALONG_SNAPSHOT_KEY_FILE ${file}: ${err.message}`,
      );
    });
    return parseList(text, `ULTRALONG_SNAPSHOT_KEY_FILE ${file}`);
  }
  return [];
}

/** Refuses a deployed model function that would write plaintext snapshots without being told to. */
export function checkSnapshotPlaintext(keys: Uint8Array[], deployed: boolean, env: Env): void {
  if (!deployed || keys.length > 0 || env.ULTRALONG_SNAPSHOT_PLAINTEXT === "1") return;
  throw new InvalidInputError(
    "snapshots would be stored unencrypted: set ULTRALONG_SNAPSHOT_KEY (or ULTRALONG_SNAPSHOT_KEY_FILE), or ULTRALONG_SNAPSHOT_PLAINTEXT=1 to store them in plaintext on purpose",
  );
}
