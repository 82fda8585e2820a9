// What the console's browser scripts share: Debian's Chromium launched headless by Playwright,
// a page of the console's usual size, signing in, moving between pages, the screenshot, and
// printing the script's findings as one JSON line for the Rust test that runs it.
//
// Environment of every script: CONSOLE_URL, TOKEN, SCREENSHOT (optional), CHROMIUM (optional).
import { chromium } from "playwright-core";

export class Failure extends Error {}

// Stops the script: the Rust test shows the message with the script's output.
export function fail(message) {
  throw new Failure(message);
}

export function env(...names) {
  const values = names.map((name) => process.env[name]);
  const missing = names.filter((_, i) => !values[i]);
  if (missing.length) fail(missing.join(", ") + " required");
  return values;
}

// Runs `script(page)` in a fresh browser and prints what it returns as JSON; any page error
// fails the run (the console must not throw while it is driven).
export async function run(name, script, { timezoneId } = {}) {
  let browser;
  try {
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    const context = await browser.newContext({ viewport: { width: 1280, height: 760 }, timezoneId });
    const page = await context.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    const result = await script(page);
    if (errors.length) fail("page errors: " + errors.join("; "));
    console.log(JSON.stringify(result));
  } catch (e) {
    console.error(name + " test: " + (e instanceof Failure ? e.message : e.stack || e));
    process.exitCode = 1;
  } finally {
    if (browser) await browser.close();
  }
}

// Opens the console and signs in with `token`; nothing of the app shows before that.
export async function signIn(page, url, token) {
  await page.goto(url);
  if (await page.isVisible("#app")) fail("the console shows data before sign-in");
  await page.fill("#token", token);
  await page.click("#signin button[type=submit]");
  await page.waitForSelector("#app:not([hidden])", { timeout: 10000 });
}

export async function signOut(page) {
  await page.click("#signout");
  await page.waitForSelector("#app", { state: "hidden" });
}

// Goes to a page through the nav, as a person would, and checks that the nav says where we are.
export async function openPage(page, name) {
  await page.click(`#nav a[href="#${name}"]`);
  await page.waitForSelector(`#page-${name}:not([hidden])`);
  const current = await page.locator("#nav a[aria-current=page]").getAttribute("href");
  if (current !== "#" + name) fail(`the nav marks ${current} as current on #${name}`);
}

// Waits until the live region says something matching `pattern` with the class `kind`.
export async function status(page, kind, pattern) {
  await page.waitForFunction(([kind, source]) => {
    const s = document.querySelector("#status");
    return s.classList.contains(kind) && new RegExp(source).test(s.textContent);
  }, [kind, pattern.source], { timeout: 15000 });
  return page.textContent("#status");
}

export async function screenshot(page) {
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
}

// The text of each row of a table body, one array of cell texts per row.
export async function rows(page, selector) {
  return page.$$eval(selector + " > tr", (trs) => trs.map((tr) => [...tr.children].map((c) => c.textContent.trim())));
}
