// Connections: opens `plain`, switches its association to field_matching, is refused a bad
// preview window, previews the change (table and chart), sees a further edit invalidate the
// preview, previews again, saves, and finds the change in the audit log. Save must be disabled
// whenever the preview on screen does not show the form's settings. Run by
// `console::the_console_previews_and_saves_a_connection`, which compares the preview with the
// API's and checks the saved settings.
//
// Environment: CONSOLE_URL, TOKEN, and those of lib.mjs.
import { env, openPage, rows, run, screenshot, signIn, status } from "./lib.mjs";

const [url, token] = env("CONSOLE_URL", "TOKEN");

// The preview's table as shown: outcomes as words, whether the row is marked as changed.
const previewRows = (page) => page.$$eval("#preview-rows > tr", (trs) => trs.map((tr) => {
  const [from, to, count, examples] = tr.children;
  return { from: from.textContent, to: to.firstChild.textContent, changed: Boolean(to.querySelector(".badge")),
           count: Number(count.textContent), examples: examples.textContent };
}));

const bars = (page) => page.$$eval("#preview-chart rect", (rects) => rects.map((r) => ({
  outcome: r.dataset.outcome, side: r.dataset.side, count: Number(r.dataset.count),
  width: Number(r.getAttribute("width")), rendered: r.getBoundingClientRect().width })));

await run("connections", async (page) => {
  await signIn(page, url, token);
  await openPage(page, "connections");
  await page.locator("#connections button", { hasText: "plain" }).click();
  await page.waitForFunction(() => /\(plain\)$/.test(document.querySelector("#connection-title").textContent));
  const metaBefore = await page.textContent("#connection-meta");
  const save = { at_first: await page.isDisabled("#c-save") };

  await page.selectOption("#c-association", "field_matching");
  save.after_edit = await page.isDisabled("#c-save");

  // A window the API refuses: the message names it and the control is marked.
  await page.fill("#p-since", "forever");
  await page.click("#p-run");
  const refused = await status(page, "error", /^Not previewed/);
  const sinceInvalid = await page.getAttribute("#p-since", "aria-invalid");
  save.after_refusal = await page.isDisabled("#c-save");

  await page.fill("#p-since", "30d");
  await page.click("#p-run");
  const previewed = await status(page, "ok", /^Preview ready/);
  const summary = await page.textContent("#preview-summary");
  const table = await previewRows(page);
  const chart = await bars(page);
  const chartLabels = await page.$$eval("#preview-chart text", (ts) => ts.map((t) => t.textContent));
  const chartText = await page.textContent("#preview-chart desc");
  save.after_preview = await page.isDisabled("#c-save");

  // Any further edit: the preview no longer shows the form's settings.
  await page.fill("#c-display_name", "Plain, matching by email");
  save.after_second_edit = await page.isDisabled("#c-save");
  const stale = await page.textContent("#preview-state");
  // The button is disabled while the preview runs (the live region still says the last one is ready).
  await page.click("#p-run");
  await page.waitForSelector("#p-run:not([disabled])");
  await status(page, "ok", /^Preview ready/);
  save.after_second_preview = await page.isDisabled("#c-save");
  await screenshot(page);

  await page.click("#c-save");
  const saved = await status(page, "ok", /^Saved/);
  const metaAfter = await page.textContent("#connection-meta");
  save.after_saving = await page.isDisabled("#c-save");

  // The change is in the audit log.
  await openPage(page, "audit");
  await page.selectOption("#a-action", "connection.update");
  await page.click("#audit-filters button[type=submit]");
  await page.waitForSelector("#audit-rows:not([aria-busy])");
  const audit = (await rows(page, "#audit-rows")).map((r) => r.slice(1, 4));
  const auditSummary = await page.locator("#audit-rows > tr summary").allTextContents();
  return { meta_before: metaBefore, save, refused, since_invalid: sinceInvalid, previewed, summary, table, chart,
           chart_labels: chartLabels, chart_text: chartText, stale, saved, meta_after: metaAfter, audit,
           audit_summary: auditSummary };
});
