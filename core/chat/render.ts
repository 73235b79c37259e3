// Chat prompts to token ids with the model's own chat_template, where control tokens come only from
// the template, never from what users wrote.
//
// How that is guaranteed: before rendering, every character that a special-token string is made
// of other than letters, digits and '_' ('<', '|', '>' for Llama 3) is swapped, in every string the
// caller supplies (message contents, names, tool calls, tool definitions, extra variables), for a
// private-use placeholder that occurs nowhere in the template or the inputs. So no special-token
// string can start, end or have its punctuation inside user text; the only ones in the rendered
// text are the template's own (and bos_token / eos_token, which we pass). We split the rendered
// text on those, swap the placeholders back in the text between them, and encode that text with
// special matching off. Swapping one character for one keeps lengths, trimming and slicing
// identical, so for messages without special-token strings the ids equal what the reference gets
// by rendering the real messages and encoding the string with special matching on.
//
// Limit, by construction: a template that spells a control token around user data, such as
// '<|' + name + '|>', would let the user pick the letters between; roles are the only data
// Llama templates put there, and roles are validated against a fixed list.

import { Template } from "@huggingface/jinja";
import { FormatError, InvalidInputError } from "../errors.ts";
import type { Tokenizer } from "../tokenizer/index.ts";
import { normalizeMessages, type TemplateMessage } from "./messages.ts";

export interface RenderChatOptions {
  /** End with the header that opens the assistant's turn. Default false. */
  addGenerationPrompt?: boolean;
  /** OpenAI-style tool definitions, passed to the template as `tools`. */
  tools?: unknown[];
  /** Defaults: the tokenizer's bos_token / eos_token from tokenizer_config.json. */
  bosToken?: string;
  eosToken?: string;
  /** Extra template variables (for Llama 3.1: date_string, tools_in_user_message, builtin_tools). */
  variables?: Record<string, unknown>;
  /**
   * Encodes each run of text between control tokens (default: tokenizer.encode, special matching
   * off). The edge passes one that splices the stored ids of uploaded files (functions/edge/file-splice.ts).
   */
  encodeText?: (text: string) => ArrayLike<number>;
}

const templates = new Map<string, Template>();

function compileTemplate(source: string): Template {
  let t = templates.get(source);
  if (!t) {
    try {
      t = new Template(source);
    } catch (err) {
      throw new FormatError(`chat_template does not parse: ${(err as Error).message}`, {
        cause: err,
      });
    }
    if (templates.size > 16) templates.clear();
    templates.set(source, t);
  }
  return t;
}

/** The variables a template is rendered with, before any defusing. */
function templateVariables(
  tokenizer: Tokenizer,
  messages: TemplateMessage[],
  opts: RenderChatOptions,
) {
  if (
    opts.tools !== undefined &&
    (!Array.isArray(opts.tools) || opts.tools.some((t) => typeof t !== "object" || t === null))
  ) {
    throw new InvalidInputError("tools: must be an array of objects");
  }
  return {
    ...opts.variables,
    messages,
    tools: opts.tools ?? null,
    add_generation_prompt: opts.addGenerationPrompt === true,
    bos_token: opts.bosToken ?? tokenizer.bosToken ?? "",
    eos_token: opts.eosToken ?? tokenizer.eosToken ?? "",
  };
}

function render(template: string, vars: Record<string, unknown>): string {
  const t = compileTemplate(template);
  try {
    return t.render(vars);
  } catch (err) {
    // raise_exception() in a template reports a bad conversation (roles out of order, ...).
    throw new InvalidInputError(`chat template refused the messages: ${(err as Error).message}`, {
      cause: err,
    });
  }
}

/**
 * The prompt as text, rendered exactly as transformers' apply_chat_template(tokenize=False) would.
 * For display and for comparison; do NOT tokenize this with special matching on.
 */
export function renderChatText(
  tokenizer: Tokenizer,
  template: string,
  messages: unknown,
  opts: RenderChatOptions = {},
): string {
  return render(template, templateVariables(tokenizer, normalizeMessages(messages), opts));
}

/** Placeholders for the special-token punctuation, chosen to collide with nothing given. */
class Defuser {
  readonly toPlaceholder = new Map<string, string>();
  readonly toOriginal = new Map<string, string>();
  private readonly pattern: RegExp | undefined;
  private readonly back: RegExp | undefined;

  constructor(specials: Iterable<string>, seen: string) {
    const chars = new Set<string>();
    for (const s of specials) for (const ch of s) if (!/[\p{L}\p{N}_]/u.test(ch)) chars.add(ch);
    // One pass over the inputs for the private-use characters they already use (a document may be
    // megabytes; probing it once per candidate would let a user make rendering quadratic).
    const taken = new Set(seen.match(/[\ue000-\uf8ff]/g));
    let cp = 0xe000;
    for (const ch of chars) {
      while (taken.has(String.fromCodePoint(cp))) {
        if (++cp > 0xf8ff)
          throw new InvalidInputError(
            "messages use every private-use character; cannot render safely",
          );
      }
      const p = String.fromCodePoint(cp++);
      this.toPlaceholder.set(ch, p);
      this.toOriginal.set(p, ch);
    }
    const cls = (s: Iterable<string>) =>
      new RegExp(`[${[...s].map((c) => `\\u{${c.codePointAt(0)!.toString(16)}}`).join("")}]`, "gu");
    if (chars.size > 0) {
      this.pattern = cls(this.toPlaceholder.keys());
      this.back = cls(this.toOriginal.keys());
    }
  }

  /** Deep copy of a JSON-like value with every string (and object key) defused. */
  value(v: unknown): unknown {
    if (typeof v === "string") return this.text(v);
    if (Array.isArray(v)) return v.map((x) => this.value(x));
    if (typeof v === "object" && v !== null) {
      const out: Record<string, unknown> = {};
      for (const [k, x] of Object.entries(v)) out[this.text(k)] = this.value(x);
      return out;
    }
    return v;
  }

  text(s: string): string {
    return this.pattern ? s.replace(this.pattern, (c) => this.toPlaceholder.get(c)!) : s;
  }

  restore(s: string): string {
    return this.back ? s.replace(this.back, (c) => this.toOriginal.get(c)!) : s;
  }
}

/** Every string inside a JSON-like value, concatenated (to pick placeholders that collide with none). */
function allText(v: unknown, out: string[] = []): string[] {
  if (typeof v === "string") out.push(v);
  else if (Array.isArray(v)) for (const x of v) allText(x, out);
  else if (typeof v === "object" && v !== null) {
    for (const [k, x] of Object.entries(v)) {
      out.push(k);
      allText(x, out);
    }
  }
  return out;
}

/**
 * Render `messages` with `template` (normally `tokenizer.chatTemplate`) and return the prompt ids,
 * with control tokens only where the template put them (see the top of this file).
 */
export function renderChat(
  tokenizer: Tokenizer,
  template: string,
  messages: unknown,
  opts: RenderChatOptions = {},
): Int32Array {
  const vars = templateVariables(tokenizer, normalizeMessages(messages), opts);
  const { bos_token, eos_token, ...untrusted } = vars;
  const specials = tokenizer.addedTokens;
  const defuser = new Defuser(
    specials.keys(),
    template + allText(untrusted).join("") + bos_token + eos_token,
  );
  const safe = defuser.value(untrusted) as Record<string, unknown>;
  // Roles are validated names the template may build control tokens from ('<|' + role + '|>').
  (safe.messages as TemplateMessage[]).forEach((m, i) => {
    m.role = vars.messages[i].role;
  });
  const rendered = render(template, { ...safe, bos_token, eos_token });

  // Runs of ids, joined once at the end: a run may be a spliced file of millions (encodeText).
  const out: ArrayLike<number>[] = [];
  const pattern = new RegExp(
    [...specials.keys()]
      .sort((a, b) => b.length - a.length)
      .map((s) => s.replace(/[.*+?^${}()|[\]\\/-]/g, "\\$&"))
      .join("|"),
    "g",
  );
  let at = 0;
  const encode = opts.encodeText ?? ((s: string) => tokenizer.encode(s));
  const text = (s: string) => {
    if (s.length === 0) return;
    out.push(encode(defuser.restore(s)));
  };
  if (specials.size > 0) {
    for (let m = pattern.exec(rendered); m; m = pattern.exec(rendered)) {
      text(rendered.slice(at, m.index));
      out.push([specials.get(m[0])!]);
      at = m.index + m[0].length;
    }
  }
  text(rendered.slice(at));
  const ids = new Int32Array(out.reduce((n, run) => n + run.length, 0));
  let n = 0;
  for (const run of out) {
    ids.set(run, n);
    n += run.length;
  }
  return ids;
}
