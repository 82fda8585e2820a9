// Pending bindings: signs in with a token, finds the pending binding named by EXPECT_BINDING
// ("<connection> / <external id>"), compares, reads the decision's evidence, links it to the
// first candidate, and checks that it leaves the list and shows among the recently resolved
// with its actor and proof. Run by the integration test `console::the_console_resolves_a_binding`,
// which prepares the binding and checks the events.
//
// Environment: CONSOLE_URL, TOKEN, EXPECT_BINDING, and those of lib.mjs.
import { env, fail, run, screenshot } from "./lib.mjs";

const [url, token, expected] = env("CONSOLE_URL", "TOKEN", "EXPECT_BINDING");

await run("bindings", async (page) => {
  const started = Date.now();
  await page.goto(url);
  if (await page.isVisible("#app")) fail("the console shows data before sign-in");

  // A wrong token is refused.
  await page.fill("#token", "not-the-token-0000000000");
  await page.click("#signin button[type=submit]");
  await page.waitForSelector("#status.error");
  if (await page.isVisible("#app")) fail("the console opened with a wrong token");

  await page.fill("#token", token);
  await page.click("#signin button[type=submit]");
  const item = page.locator("#bindings li", { hasText: expected });
  await item.waitFor({ timeout: 10000 });
  const loaded = Date.now() - started;
  const current = await page.locator("#nav a[aria-current=page]").textContent();

  // Filtering by another connection hides it; clearing the filter shows it again.
  await page.fill("#f-connection", "no-such-connection");
  await page.click("#filters button[type=submit]");
  await page.waitForSelector("#empty:not([hidden])");
  await page.fill("#f-connection", "");
  await page.click("#filters button[type=submit]");
  await item.waitFor();

  // Opened from the keyboard.
  await item.focus();
  await page.keyboard.press("Enter");
  await page.waitForSelector("#detail-body:not([hidden])");
  const header = await page.locator("#compare-head th").allTextContents();
  if (!header.includes("Candidate 1")) fail("no candidate column: " + header.join(", "));
  const emailRow = await page.locator("#compare-body tr", { hasText: "Email" }).allTextContents();
  // The decision's evidence beside the comparison.
  await page.waitForSelector("#why-fields tr");
  const why = await page.locator("#why-fields tr").allTextContents();
  const attributeRow = await page.locator('#compare-body tr[data-key="attributes.employee_id"]').allTextContents();
  const setAside = await page.locator("#why-candidates tr").allTextContents();
  // Side by side: the evidence starts at the comparison's height, to its right.
  const compare = await page.locator("#compare-body").boundingBox();
  const evidence = await page.locator("#why-fields").boundingBox();
  const sideBySide = evidence.x > compare.x + compare.width - 1 && evidence.y < compare.y + compare.height;
  await screenshot(page);

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
  return { listed: true, resolved: true, current, status, email_row: emailRow[0], attribute_row: attributeRow[0], why,
           set_aside: setAside, side_by_side: sideBySide, resolved_rows: resolvedRows, loaded_ms: loaded };
});
