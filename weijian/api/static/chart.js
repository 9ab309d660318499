// The evidence chart, drawn by hand in SVG: min–max band, average line, the limit, the window.

const NS = "http://www.w3.org/2000/svg";
const PAD = { left: 64, right: 24, top: 20, bottom: 36 };

function svgEl(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceTicks(lo, hi, count = 5) {
  const span = hi - lo || 1;
  const raw = span / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => span / s <= count) ?? raw;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step / 1e6; v += step) ticks.push(Number(v.toFixed(10)));
  return ticks;
}

/**
 * Draw a reading series into `container` (replacing its content).
 * series: the /readings answer; options: { limit, unit, windowFrom, windowTo, formatTime, emptyText }.
 */
export function drawSeries(container, series, options) {
  const width = container.clientWidth || 960;
  const height = container.clientHeight || 300;
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, width, height, class: "chart" });
  container.replaceChildren(svg);
  const points = series.points;
  if (!points.length) {
    svg.append(svgEl("text", { x: width / 2, y: height / 2, class: "chart-empty", "text-anchor": "middle" }, options.emptyText));
    return;
  }
  const t0 = Date.parse(series.from);
  const t1 = Date.parse(series.to);
  let lo = Math.min(...points.map((p) => p.min));
  let hi = Math.max(...points.map((p) => p.max));
  if (options.limit !== null && options.limit !== undefined) {
    lo = Math.min(lo, options.limit);
    hi = Math.max(hi, options.limit);
  }
  const margin = (hi - lo || Math.abs(hi) || 1) * 0.08;
  lo -= margin;
  hi += margin;
  const x = (ms) => PAD.left + ((ms - t0) / (t1 - t0)) * (width - PAD.left - PAD.right);
  const y = (v) => PAD.top + (1 - (v - lo) / (hi - lo)) * (height - PAD.top - PAD.bottom);
  const bucketMs = series.bucket_seconds * 1000;
  const mid = (p) => Date.parse(p.ts) + bucketMs / 2;

  // The alert's evidence window, shaded.
  if (options.windowFrom && options.windowTo) {
    const a = x(Math.max(t0, Date.parse(options.windowFrom)));
    const b = x(Math.min(t1, Date.parse(options.windowTo)));
    svg.append(svgEl("rect", { x: a, y: PAD.top, width: Math.max(2, b - a), height: height - PAD.top - PAD.bottom, class: "chart-window" }));
  }
  for (const v of niceTicks(lo, hi)) {
    svg.append(svgEl("line", { x1: PAD.left, x2: width - PAD.right, y1: y(v), y2: y(v), class: "chart-grid" }));
    svg.append(svgEl("text", { x: PAD.left - 8, y: y(v) + 4, "text-anchor": "end", class: "chart-label" }, String(v)));
  }
  const steps = 6;
  for (let i = 0; i <= steps; i += 1) {
    const ms = t0 + ((t1 - t0) * i) / steps;
    svg.append(svgEl("text", { x: x(ms), y: height - 12, "text-anchor": "middle", class: "chart-label" }, options.formatTime(new Date(ms).toISOString())));
  }
  const band = points.map((p) => `${x(mid(p))},${y(p.max)}`).concat(
    [...points].reverse().map((p) => `${x(mid(p))},${y(p.min)}`),
  );
  svg.append(svgEl("polygon", { points: band.join(" "), class: "chart-band" }));
  svg.append(svgEl("polyline", { points: points.map((p) => `${x(mid(p))},${y(p.avg)}`).join(" "), class: "chart-line" }));
  if (points.length < 60) {
    for (const p of points) svg.append(svgEl("circle", { cx: x(mid(p)), cy: y(p.avg), r: 2.5, class: "chart-dot" }));
  }
  if (options.limit !== null && options.limit !== undefined) {
    const ly = y(options.limit);
    svg.append(svgEl("line", { x1: PAD.left, x2: width - PAD.right, y1: ly, y2: ly, class: "chart-limit" }));
    svg.append(svgEl("text", { x: width - PAD.right - 4, y: ly - 6, "text-anchor": "end", class: "chart-limit-label" }, `${options.limitText} ${options.limit}${options.unit ? ` ${options.unit}` : ""}`));
  }
}
