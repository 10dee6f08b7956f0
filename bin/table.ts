export type CliTable = { columns: string[]; rows: string[][] };

/** Prints left-aligned columns, two spaces apart, like kubectl; returns exit code 0. */
export function printTable(table: CliTable): number {
  const widths = table.columns.map((column, i) =>
    Math.max(column.length, ...table.rows.map((row) => (row[i] ?? "").length)),
  );
  const line = (cells: string[]) =>
    cells
      .map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(widths[i] ?? 0)))
      .join("  ")
      .trimEnd();
  console.log(line(table.columns));
  for (const row of table.rows) console.log(line(row));
  if (table.rows.length === 0) console.log("(none)");
  return 0;
}
