import { describe, expect, test } from "bun:test";
import { isoTimestamps } from "../../kit/clock.ts";

describe("isoTimestamps", () => {
  test("formats every millisecond exactly as Date.toISOString does", () => {
    const iso = isoTimestamps();
    const start = Date.UTC(2026, 10, 30, 23, 59, 58, 990);
    // Across second, minute, hour, day and month boundaries, in order and out of order.
    for (let ms = start; ms < start + 2500; ms++) expect(iso(ms)).toBe(new Date(ms).toISOString());
    for (const ms of [start + 1999, start, start + 1000, 0, 999, 1000, Date.UTC(2024, 1, 29, 12)]) {
      expect(iso(ms)).toBe(new Date(ms).toISOString());
    }
  });

  test("takes the long way for fractions and far years", () => {
    const iso = isoTimestamps();
    for (const ms of [1.5, -1, Date.UTC(10000, 0, 1), Date.UTC(9999, 11, 31, 23, 59, 59, 999)]) {
      expect(iso(ms)).toBe(new Date(ms).toISOString());
    }
  });
});
