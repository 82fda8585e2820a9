// The audit log, in a browser set to Shanghai time (so that the from/to filters must convert
// local times to instants): lists the newest entries, loads more, filters by action, by the
// window WINDOW_FROM..WINDOW_TO (RFC 3339 instants), and by actor, and opens one change. Run by
// `console::the_console_reads_the_audit_log`, which made the writes.
//
// Environment: CONSOLE_URL, TOKEN, WINDOW_FROM, WINDOW_TO, and those of lib.mjs.
import { env, openPage, run, screenshot, signIn } from "./lib.mjs";

const [url, token, from, to] = env("CONSOLE_URL", "TOKEN", "WINDOW_FROM", "WINDOW_TO");

const entries = (page) => page.$$eval("#audit-rows > tr", (trs) => trs.map((tr) => ({
  actor: tr.children[1].textContent, action: tr.children[2].textContent, target: tr.children[3].textContent,
  change: tr.querySelector("summary").textContent })));

// What a person in the browser's time zone types into a datetime-local control for `iso`, in
// the form the control keeps: it drops seconds that are zero, and a fill whose value the control
// rewrites is refused as malformed.
const local = (page, iso) => page.evaluate((iso) => {
  const d = new Date(iso);
  const p = (n) => String(n).padStart(2, "0");
  const seconds = d.getSeconds() === 0 ? "" : `:${p(d.getSeconds())}`;
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}${seconds}`;
}, iso);

async function filter(page) {
  await page.click("#audit-filters button[type=submit]");
  await page.waitForSelector("#audit-rows:not([aria-busy])");
  return entries(page);
}

await run("audit", async (page) => {
  await signIn(page, url, token);
  await openPage(page, "audit");
  await page.waitForSelector("#audit-rows > tr");
  await page.waitForSelector("#audit-rows:not([aria-busy])");
  const zone = await page.textContent("#a-zone");
  const first = await entries(page);
  const moreShown = await page.isVisible("#audit-more");
  await page.click("#audit-more");
  await page.waitForFunction((n) => document.querySelectorAll("#audit-rows > tr").length > n, first.length);
  await page.waitForSelector("#audit-rows:not([aria-busy])");
  const all = await entries(page);
  const moreAfter = await page.isVisible("#audit-more");

  await page.selectOption("#a-action", "user.update");
  const byAction = await filter(page);

  const [since, until] = [await local(page, from), await local(page, to)];
  await page.fill("#a-since", since);
  await page.fill("#a-until", until);
  const inWindow = await filter(page);

  await page.selectOption("#a-action", "");
  const windowAny = await filter(page);

  await page.fill("#a-actor", "ops-alice");
  const windowAlice = await filter(page);

  // The window's entries again, one change opened.
  await page.fill("#a-actor", "");
  await filter(page);
  const firstRow = page.locator("#audit-rows > tr").first();
  await firstRow.locator("summary").click();
  const opened = await firstRow.locator("details tbody > tr").evaluateAll((trs) => trs.map((tr) => [...tr.children].map((c) => c.textContent)));
  await screenshot(page);
  return { zone, typed: [since, until], first, more_shown: moreShown, all, more_after: moreAfter,
           by_action: byAction, in_window: inWindow, window_any: windowAny, window_alice: windowAlice, opened };
}, { timezoneId: "Asia/Shanghai" });
