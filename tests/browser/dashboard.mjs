// Dashboard: reads the decisions of the last 24 hours as the table and the two charts show
// them, then refreshes from the keyboard. Run by `console::the_console_dashboard_counts_decisions`,
// which sent the logins.
//
// Environment: CONSOLE_URL, TOKEN, and those of lib.mjs.
import { env, fail, openPage, rows, run, screenshot, signIn, status } from "./lib.mjs";

const [url, token] = env("CONSOLE_URL", "TOKEN");

const rects = (page, chart) => page.$$eval(`#${chart} rect`, (rs) => rs.map((r) => ({
  connection: r.dataset.connection, outcome: r.dataset.outcome, hour: r.dataset.hour, count: Number(r.dataset.count),
  width: Number(r.getAttribute("width")), height: Number(r.getAttribute("height")), fill: r.getAttribute("fill") })));

await run("dashboard", async (page) => {
  await signIn(page, url, token);
  await openPage(page, "dashboard");
  await status(page, "ok", /^Dashboard updated/);
  const head = await page.locator("#dash-head th").allTextContents();
  const table = await rows(page, "#dash-rows");
  const totals = await rows(page, "#dash-foot");
  const bars = await rects(page, "dash-bars");
  const hourly = await rects(page, "dash-hourly");
  const legend = await page.locator("#dash-legend li").allTextContents();
  const described = await page.textContent("#dash-bars desc");
  const summary = await page.textContent("#dash-summary");

  // Refresh from the keyboard: the figures are asked for again.
  await page.focus("#d-refresh");
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url().includes("/v1/stats/decisions")),
    page.keyboard.press("Enter"),
  ]);
  await page.waitForSelector("#dash-rows:not([aria-busy])");
  const refreshed = await rows(page, "#dash-rows");
  if (JSON.stringify(refreshed) !== JSON.stringify(table)) fail("the refresh changed the figures");
  await screenshot(page);
  return { head, table, totals, bars, hourly, legend, described, summary, refreshed: response.url() };
});
