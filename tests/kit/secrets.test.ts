import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { repoRoot } from "../../devkit/proc.ts";
import {
  bearerToken,
  constantTimeEqual,
  randomToken,
  sameSecret,
  sha256Hex,
} from "../../kit/crypto.ts";

describe("kit/crypto", () => {
  test("constantTimeEqual is equality, whatever the lengths", () => {
    expect(constantTimeEqual("fa_abc", "fa_abc")).toBe(true);
    expect(constantTimeEqual("fa_abd", "fa_abc")).toBe(false);
    expect(constantTimeEqual("fa_ab", "fa_abc")).toBe(false);
    expect(constantTimeEqual("fa_abcd", "fa_abc")).toBe(false);
    expect(constantTimeEqual("", "fa_abc")).toBe(false);
    expect(constantTimeEqual("", "")).toBe(true);
    expect(sameSecret(null, "x")).toBe(false);
    expect(sameSecret(undefined, "")).toBe(false);
    expect(sameSecret("x", "x")).toBe(true);
  });

  test("randomToken carries its prefix and 256 fresh bits; bearerToken reads the header", async () => {
    const a = randomToken("fw_");
    const b = randomToken("fw_");
    expect(a).toMatch(/^fw_[A-Za-z0-9_-]{43}$/);
    expect(a).not.toBe(b);
    expect(bearerToken(`bearer ${a}`)).toBe(a);
    expect(bearerToken(`Basic ${a}`)).toBe("");
    expect(await sha256Hex("abc")).toBe(
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    );
  });
});

/**
 * Every token check compares in constant time: no service compares a secret, or the hash of
 * one, with `===`/`!==`; they go through `constantTimeEqual`/`sameSecret` or a lookup by
 * SHA-256. A source scan, so a new comparison written the fast way fails here.
 */
describe("secret comparisons", () => {
  const sources = (dir: string): string[] =>
    readdirSync(dir).flatMap((name) => {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) return name === "sim" ? [] : sources(path);
      return path.endsWith(".ts") ? [path] : [];
    });
  // An operand whose last name ends like a secret: `agentToken`, `row.credentialHash`,
  // `presented_token` (not a count such as `prompt_tokens`).
  const secret = /(token|credential|hash|secret|password)$/i;
  const comparison = /(typeof\s+)?([\w$.?]+)\s*(===|!==)\s*(typeof\s+)?([\w$.?]+)/g;

  test("no service compares a token, credential or hash with === or !==", () => {
    const offenders: string[] = [];
    for (const dir of ["manager", "agent", "router", "kit", "runtime"]) {
      for (const file of sources(join(repoRoot, dir))) {
        readFileSync(file, "utf8")
          .split("\n")
          .forEach((line, index) => {
            const code = line.replace(/\/\/.*$/, "");
            for (const [, leftTypeof, left = "", , rightTypeof, right = ""] of code.matchAll(
              comparison,
            )) {
              const suspect = (typeofed: string | undefined, operand: string) =>
                !typeofed && secret.test(operand.replace(/\?$/, "").split(/[.?]+/).pop() ?? "");
              const absent = /^(null|undefined|""|''|0)$/;
              if (absent.test(left) || absent.test(right)) continue;
              if (suspect(leftTypeof, left) || suspect(rightTypeof, right)) {
                offenders.push(`${file.slice(repoRoot.length + 1)}:${index + 1}: ${line.trim()}`);
              }
            }
          });
      }
    }
    expect(offenders).toEqual([]);
  });
});
