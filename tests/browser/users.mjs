// Users: finds an account by email and by an attribute, opens it from the keyboard, unlinks the
// identity whose external id is HOSTILE_ID, protects the account, renames it, tries to give it
// another account's email (refused), and as a viewer tries to change it (refused). Run by
// `console::the_console_finds_unlinks_protects_and_edits_an_account`, which checks the events
// and the account.
//
// Environment: CONSOLE_URL, TOKEN, VIEWER_TOKEN, HOSTILE_ID, and those of lib.mjs.
import { env, fail, openPage, rows, run, screenshot, signIn, signOut, status } from "./lib.mjs";

const [url, token, viewerToken, hostile] = env("CONSOLE_URL", "TOKEN", "VIEWER_TOKEN", "HOSTILE_ID");

async function search(page, by, value, attribute) {
  await page.selectOption("#u-by", by);
  if (attribute) await page.fill("#u-attribute", attribute);
  await page.fill("#u-value", value);
  await page.click("#user-search button[type=submit]");
  await page.waitForSelector("#user-results:not([aria-busy])");
  await status(page, "ok", /found/);
  return page.locator("#user-results button").allTextContents();
}

const field = (page, name) => page.locator(`#user-fields tr[data-field="${name}"] td`).textContent();
const identities = async (page) => (await rows(page, "#user-identities")).map((r) => r.slice(0, 2));

await run("users", async (page) => {
  await signIn(page, url, token);
  const title = await page.title();
  await openPage(page, "users");

  // By email as a person might type it: the API normalises it.
  const byEmail = await search(page, "email", "Mei@Example.COM");
  // By an attribute's value: every account holding it.
  const byAttribute = await search(page, "attribute", "blue", "team");

  // Opened from the keyboard.
  await page.locator("#user-results button", { hasText: "mei@example.com" }).focus();
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => document.querySelector("#user-title").textContent === "mei@example.com");
  const fields = await rows(page, "#user-fields");
  const attributes = await rows(page, "#user-attributes");
  const before = await identities(page);
  // The hostile external id and attribute value are shown as text, never parsed as markup.
  const injected = await page.locator("#app img, #app b").count();

  // Unlinking takes a second, explicit step.
  const row = page.locator("#user-identities > tr", { hasText: hostile });
  await row.getByRole("button", { name: "Unlink" }).click();
  await row.getByRole("button", { name: "Yes, unlink" }).click();
  const unlinked = await status(page, "ok", /^Unlinked/);
  const after = await identities(page);

  // Protect, with Space from the keyboard.
  await page.focus("#user-protect");
  await page.keyboard.press(" ");
  const protecting = await status(page, "ok", /is protected/);
  const protectedField = await field(page, "Protected");
  const protectButton = await page.textContent("#user-protect");

  await page.fill("#ue-name", "Mei Chen-Li");
  await page.click("#user-edit button[type=submit]");
  const renamed = await status(page, "ok", /saved/);
  const nameField = await field(page, "Name");

  // Another account holds this email: refused, and the account stays as it was.
  await page.fill("#ue-email", "other@example.com");
  await page.click("#user-edit button[type=submit]");
  const conflict = await status(page, "error", /^Not saved/);
  const formError = await page.textContent("#ue-error");
  const emailField = await field(page, "Email");
  await screenshot(page);

  // A viewer reads, but may not write.
  await signOut(page);
  // Nothing of the account stays in the page, hidden or not.
  const leftover = await page.evaluate(() => document.querySelector("#app").textContent.includes("mei@example.com") ||
    [...document.querySelectorAll("#user-detail input")].some((i) => i.value || i.defaultValue || i.checked || i.defaultChecked));
  if (leftover) fail("the account stayed in the page after signing out");
  await signIn(page, url, viewerToken);
  await openPage(page, "users");
  const viewerResults = await search(page, "email", "mei@example.com");
  await page.click("#user-protect");
  const viewerRefused = await status(page, "error", /^Not saved/);
  const viewerProtected = await field(page, "Protected");

  if (await page.title() === "owned") fail("a hostile value ran as script");
  return { title, by_email: byEmail, by_attribute: byAttribute, fields, attributes, identities_before: before,
           injected, unlinked, identities_after: after, protecting, protected_field: protectedField,
           protect_button: protectButton, renamed, name_field: nameField, conflict, form_error: formError,
           email_field: emailField, viewer_results: viewerResults, viewer_refused: viewerRefused,
           viewer_protected: viewerProtected };
});
