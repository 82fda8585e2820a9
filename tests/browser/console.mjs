// Drives the admin console (/admin) in headless Chromium: signs in with a token, finds the
// pending binding named by EXPECT_BINDING ("<connection> / <external id>"), compares, reads the
// decision's evidence, links it to the first candidate, and checks that it leaves the list and
// shows among the recently resolved with its actor and proof. Run by the integration test
// `console::the_console_resolves_a_binding`, which prepares the binding and checks the events.
//
// Environment: CONSOLE_URL, TOKEN, EXPECT_BINDING, SCREENSHOT (optional), CHROMIUM (optional).
import { chromium } from "playwright-core";

const url = process.env.CONSOLE_URL;
const token = process.env.TOKEN;
const expected = process.env.EXPECT_BINDING;
const fail = (message) => { console.error("console test: " + message); process.exit(1); };
if (!url || !token || !expected) fail("CONSOLE_URL, TOKEN and EXPECT_BINDING are required");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const started = Date.now();
  await page.goto(url);
  if (await page.isVisible("#app")) fail("the console shows data before sign-in");

  // A wrong token is refused.
  await page.fill("#token", "not-the-token-0000000000");
  await page.click("#signin button[type=submit]");
  await page.waitForSelector("#status.error");

  await page.fill("#token", token);
  await page.click("#signin button[type=submit]");
  const item = page.locator("#bindings li", { hasText: expected });
  await item.waitFor({ timeout: 10000 });
  const loaded = Date.now() - started;

  // Filtering by another connection hides it; clearing the filter shows it again.
  await page.fill("#f-connection", "no-such-connection");
  await page.click("#filters button[type=submit]");
  await page.waitForSelector("#empty:not([hidden])");
  await page.fill("#f-connection", "");
  await page.click("#filters button[type=submit]");
  await item.waitFor();

  await item.click();
  await page.waitForSelector("#detail-body:not([hidden])");
  const header = await page.locator("#compare-head th").allTextContents();
  if (!header.includes("Candidate 1")) fail("no candidate column: " + header.join(", "));
  const emailRow = await page.locator("#compare-body tr", { hasText: "Email" }).allTextContents();
  // The decision's evidence beside the comparison.
  await page.waitForSelector("#why-fields tr");
  const why = await page.locator("#why-fields tr").allTextContents();
  const attributeRow = await page.locator('#compare-body tr[data-key="attributes.employee_id"]').allTextContents();
  const setAside = await page.locator("#why-candidates tr").allTextContents();
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });

  await page.locator("#link-actions button").first().click();
  await page.waitForFunction(() => /linked/.test(document.querySelector("#status.ok")?.textContent || ""));
  const status = await page.textContent("#status");
  if (await item.count() !== 0) fail("the resolved binding is still listed");
  // And after the list is loaded again from the API.
  await page.click("#filters button[type=submit]");
  await page.waitForFunction(() => !document.querySelector("#bindings").hasAttribute("aria-busy"));
  if (await item.count() !== 0) fail("the resolved binding is listed again after a reload");
  // It is among the recently resolved, with who resolved it and the proof.
  await page.locator("#resolved tr", { hasText: expected }).waitFor({ timeout: 10000 });
  const resolvedRows = await page.locator("#resolved tr").allTextContents();
  if (errors.length) fail("page errors: " + errors.join("; "));
  console.log(JSON.stringify({ listed: true, resolved: true, status, email_row: emailRow[0], attribute_row: attributeRow[0], why, set_aside: setAside, resolved_rows: resolvedRows, loaded_ms: loaded }));
} finally {
  await browser.close();
}
