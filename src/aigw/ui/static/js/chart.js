// A small stacked bar chart of requests per day by outcome, drawn as inline
// SVG (colours come from the stylesheet, so the CSP needs no inline style).

import { fmtInt, h, svg } from "./dom.js";

export const OUTCOMES = [
  ["completed", "Completed"],
  ["truncated", "Truncated"],
  ["rejected", "Rejected"],
  ["upstream_error", "Upstream error"],
  ["client_disconnected", "Client disconnected"],
  ["interrupted", "Interrupted (shutdown)"],
];
const OUTCOME_NAMES = new Set(OUTCOMES.map(([name]) => name));

const dayLabel = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", timeZone: "UTC" });
const dayLong = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeZone: "UTC" });

/** Requests of one bucket per outcome (unknown outcomes grouped as "other"). */
export function outcomeCounts(bucket) {
  const counts = {};
  for (const [name, figures] of Object.entries(bucket.by_outcome || {})) {
    const n = typeof figures === "number" ? figures : figures?.requests || 0;
    const key = OUTCOME_NAMES.has(name) ? name : "other";
    counts[key] = (counts[key] || 0) + n;
  }
  return counts;
}

/** Round up to 1, 2 or 5 × 10^n so gridlines land on readable numbers. */
function niceMax(value) {
  if (value <= 4) return 4;
  const exp = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * exp >= value) return step * exp;
  }
  return 10 * exp;
}

const parseDay = (date) => new Date(`${String(date).slice(0, 10)}T00:00:00Z`);

/**
 * days: [{date: "YYYY-MM-DD", requests, by_outcome: {...}}] in order.
 * Returns an <svg role="img"> with a <title> per day for pointer users.
 */
export function usageChart(days, { width: wanted } = {}) {
  // Drawn at the container's width so axis text renders at its real size.
  const width = Math.max(300, Math.round(wanted || 720));
  const height = 180;
  const pad = { top: 10, right: 8, bottom: 24, left: 40 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const totals = days.map((d) => d.requests || 0);
  const max = niceMax(Math.max(0, ...totals));
  const slot = plotW / Math.max(days.length, 1);
  const barW = Math.max(2, Math.min(28, slot * 0.68));
  const y = (v) => pad.top + plotH - (v / max) * plotH;

  const first = days[0] ? dayLong.format(parseDay(days[0].date)) : "";
  const last = days.length ? dayLong.format(parseDay(days[days.length - 1].date)) : "";
  const sum = totals.reduce((a, b) => a + b, 0);
  const chart = svg("svg", {
    class: "chart",
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": `Requests per day from ${first} to ${last}: ${fmtInt(sum)} in total, at most ${fmtInt(Math.max(0, ...totals))} in a day.`,
    "data-testid": "usage-chart",
  });

  for (const fraction of [0, 0.5, 1]) {
    const value = max * fraction;
    const yy = y(value);
    chart.append(
      svg("line", { class: "grid", x1: pad.left, x2: width - pad.right, y1: yy, y2: yy }),
      svg("text", { class: "axis-label", x: pad.left - 6, y: yy + 3.5, "text-anchor": "end", text: fmtInt(value) }),
    );
  }

  // As many date labels as fit (about 64px each), evenly spaced.
  const labelEvery = Math.max(1, Math.ceil(days.length / Math.max(1, Math.floor(plotW / 64))));
  days.forEach((day, index) => {
    const x0 = pad.left + index * slot;
    const cx = x0 + slot / 2;
    const counts = outcomeCounts(day);
    const date = parseDay(day.date);
    const parts = [...OUTCOMES.map(([name, label]) => [name, label]), ["other", "Other"]]
      .filter(([name]) => counts[name])
      .map(([name, label]) => `${fmtInt(counts[name])} ${label.toLowerCase()}`);
    const group = svg(
      "g",
      { class: "day" },
      svg(
        "title",
        {
          text: `${dayLong.format(date)}: ${fmtInt(day.requests || 0)} requests${parts.length ? ` (${parts.join(", ")})` : ""}`,
        },
      ),
      svg("rect", { class: "bar-bg", x: x0, y: pad.top, width: slot, height: plotH }),
    );
    let base = 0;
    for (const name of [...OUTCOMES.map(([n]) => n), "other"]) {
      const n = counts[name] || 0;
      if (!n) continue;
      const top = y(base + n);
      group.append(
        svg("rect", {
          class: `o-${name}`,
          x: cx - barW / 2,
          y: top,
          width: barW,
          height: Math.max(1, y(base) - top),
          rx: Math.min(1.5, barW / 4),
        }),
      );
      base += n;
    }
    if (index % labelEvery === 0) {
      group.append(
        svg("text", {
          class: "axis-label",
          x: cx,
          y: height - 6,
          "text-anchor": "middle",
          text: dayLabel.format(date),
        }),
      );
    }
    chart.append(group);
  });
  return chart;
}

/** The same numbers as a table, for screen readers and anyone who wants exact figures. */
export function usageTable(days) {
  return h(
    "table",
    { class: "data" },
    h("caption", { class: "visually-hidden" }, "Requests and tokens per day"),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "col" }, "Day (UTC)"),
        h("th", { scope: "col", class: "num" }, "Requests"),
        h("th", { scope: "col", class: "num" }, "Input tokens"),
        h("th", { scope: "col", class: "num" }, "Output tokens"),
        h("th", { scope: "col" }, "Outcomes"),
      ),
    ),
    h(
      "tbody",
      {},
      days
        .filter((d) => d.requests)
        .map((day) => {
          const counts = outcomeCounts(day);
          return h(
            "tr",
            {},
            h("td", {}, dayLong.format(parseDay(day.date))),
            h("td", { class: "num" }, fmtInt(day.requests)),
            h("td", { class: "num" }, fmtInt(day.input_tokens)),
            h("td", { class: "num" }, fmtInt(day.output_tokens)),
            h(
              "td",
              {},
              OUTCOMES.filter(([name]) => counts[name])
                .map(([name, label]) => `${label}: ${fmtInt(counts[name])}`)
                .join(", "),
            ),
          );
        }),
    ),
  );
}
