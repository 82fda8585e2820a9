// Webhooks: is refused an address that is not http(s), creates an endpoint for RECEIVER_URL with
// a hostile description (shown as text) and reads its secret the one time it is shown, pings it,
// disables and enables it, changes its patterns (and is refused a bad one), replays the pool's
// last hour, reads the delivery log and retries the delivery, filters the log, rotates the
// secret; then as a viewer finds no write control; then deletes the endpoint (after cancelling
// once). Run by `console::the_console_creates_pings_pauses_and_deletes_a_webhook`, which checks
// what the receiver got, the audit log and the API.
//
// Environment: CONSOLE_URL, TOKEN, VIEWER_TOKEN, RECEIVER_URL, POOL, HOSTILE_DESCRIPTION, and
// those of lib.mjs.
import { env, fail, openPage, rows, run, screenshot, signIn, signOut, status } from "./lib.mjs";

const [url, token, viewerToken, receiverUrl, pool, hostile] =
  env("CONSOLE_URL", "TOKEN", "VIEWER_TOKEN", "RECEIVER_URL", "POOL", "HOSTILE_DESCRIPTION");

// The delivery log's last load is done (its table body may be empty).
const logLoaded = (page) => page.waitForSelector("#delivery-rows:not([aria-busy])", { state: "attached" });

const field = (page, name) => page.locator(`#webhook-fields tr[data-field="${name}"] td`).textContent();

// The delivery log as shown: each delivery with its attempts' cells.
const deliveries = (page) => page.$$eval("#delivery-rows > tr", (trs) => trs.map((tr) => ({
  id: tr.dataset.id, state: tr.dataset.state, event: tr.children[1].textContent, attempts: Number(tr.children[4].textContent),
  log: [...tr.querySelectorAll("table.attempts > tbody > tr")].map((a) => [...a.children].map((c) => c.textContent.trim())),
})));

// Waits until the delivery log shows what `done` wants; the log follows pending deliveries by
// itself, and is refreshed by hand now and then in case an attempt was recorded after the state.
async function logUntil(page, what, done) {
  const started = Date.now();
  let refreshed = started;
  for (;;) {
    await logLoaded(page);
    const shown = await deliveries(page);
    if (done(shown)) return shown;
    if (Date.now() - started > 20000) fail(what + ": the delivery log shows " + JSON.stringify(shown));
    if (Date.now() - refreshed > 4000) {
      refreshed = Date.now();
      await page.click("#delivery-filters button[type=submit]");
    }
    await page.waitForTimeout(200);
  }
}

// The controls a person can see on the page: their id, else their text.
const controls = (page) => page.$$eval("#page-webhooks :is(button, input, select, textarea)", (nodes) =>
  nodes.filter((n) => n.checkVisibility()).map((n) => n.id || n.textContent.trim()));

async function openEndpoint(page) {
  await page.locator("#webhook-rows button.link").click();
  await page.waitForSelector("#webhook-detail:not([hidden])");
  await logLoaded(page);
}

await run("webhooks", async (page) => {
  const dialogs = [];
  page.on("dialog", (d) => { dialogs.push(d.message()); d.dismiss().catch(() => {}); });
  await signIn(page, url, token);
  await openPage(page, "webhooks");
  await page.waitForSelector("#webhooks-empty:not([hidden])");
  await page.waitForSelector("#page-webhooks.writable");

  // An address that is not http(s): the API's message, and the field marked.
  await page.fill("#wc-user_pool_id", pool);
  await page.fill("#wc-url", "ftp://nowhere.example/in");
  await page.click("#webhook-create button[type=submit]");
  const refused = await status(page, "error", /^Not created/);
  const refusedForm = await page.textContent("#wc-error");
  const urlInvalid = await page.getAttribute("#wc-url", "aria-invalid");

  await page.fill("#wc-url", receiverUrl);
  await page.fill("#wc-event_types", "user.*, binding.#");
  await page.fill("#wc-description", hostile);
  await page.click("#webhook-create button[type=submit]");
  const created = await status(page, "ok", /^Endpoint created/);
  await page.waitForSelector("#webhook-secret:not([hidden])");
  const secret = await page.inputValue("#webhook-secret-value");
  const secretText = await page.textContent("#webhook-secret-text");
  const secretFocused = await page.evaluate(() => document.activeElement.id);
  const createErrorAfter = await page.textContent("#wc-error");
  // Dismissed, it is nowhere in the page; the endpoint opened again does not show it.
  await page.click("#webhook-secret-done");
  const secretInPage = (s) => page.evaluate((s) => document.documentElement.outerHTML.includes(s) ||
    [...document.querySelectorAll("input")].some((i) => i.value.includes(s) || i.defaultValue.includes(s)), s);
  const secretLeft = await secretInPage(secret);
  await openEndpoint(page);
  const secretAgain = await page.isVisible("#webhook-secret");
  const id = await field(page, "Id");
  const list = await rows(page, "#webhook-rows");
  const description = await field(page, "Description");
  const title = await page.textContent("#webhook-title");
  const noDeliveries = await page.isVisible("#deliveries-empty");

  await page.click("#wh-ping");
  const pinged = await status(page, "ok", /^Ping delivered/);
  const pingShown = await page.textContent("#wh-ping-text");
  const pingId = (await page.textContent("#wh-ping-id")).match(/webhook-id (\S+) /)[1];

  await page.click("#wh-toggle");
  const disabled = await status(page, "ok", /^Disabled/);
  const disabledState = await field(page, "State");
  const disabledRow = (await rows(page, "#webhook-rows"))[0];
  const enableButton = await page.textContent("#wh-toggle");
  await page.click("#wh-toggle");
  const enabled = await status(page, "ok", /^Enabled/);
  const enabledState = await field(page, "State");
  const disableButton = await page.textContent("#wh-toggle");

  // Patterns: a bad one refused with the API's message, then a good one saved.
  await page.fill("#we-event_types", "user..created");
  await page.click("#webhook-edit button[type=submit]");
  const patternRefused = await status(page, "error", /^Not saved/);
  const patternError = await page.textContent("#we-error");
  const patternInvalid = await page.getAttribute("#we-event_types", "aria-invalid");
  await page.fill("#we-event_types", "user.#");
  await page.click("#webhook-edit button[type=submit]");
  const saved = await status(page, "ok", /^Endpoint saved/);
  const types = await field(page, "Event types");
  const typesRow = (await rows(page, "#webhook-rows"))[0][2];

  // Replay: a time that is not one is refused; the last hour holds the account renamed before.
  await page.fill("#wr-since", "yesterday");
  await page.click("#webhook-replay button[type=submit]");
  const replayRefused = await status(page, "error", /^Not replayed/);
  const sinceInvalid = await page.getAttribute("#wr-since", "aria-invalid");
  await page.fill("#wr-since", "1h");
  await page.click("#webhook-replay button[type=submit]");
  const replayed = await status(page, "ok", /^Replay: /);
  const firstLog = await logUntil(page, "the replayed event", (ds) => ds.length === 1 && ds[0].state === "delivered" && ds[0].log.length === 1);

  // The delivery again, by its Retry button.
  await page.locator(`#delivery-rows > tr[data-id="${firstLog[0].id}"] button`, { hasText: "Retry" }).click();
  const retried = await status(page, "ok", /queued again/);
  const secondLog = await logUntil(page, "the retried delivery", (ds) => ds.length === 1 && ds[0].state === "delivered" && ds[0].log.length === 2);

  // The state filter.
  await page.selectOption("#dl-state", "failed");
  await page.click("#delivery-filters button[type=submit]");
  await logLoaded(page);
  const failedShown = { rows: (await deliveries(page)).length, empty: await page.isVisible("#deliveries-empty") };
  await page.selectOption("#dl-state", "delivered");
  await page.click("#delivery-filters button[type=submit]");
  await logLoaded(page);
  const deliveredShown = (await deliveries(page)).length;
  await page.selectOption("#dl-state", "");
  await page.click("#delivery-filters button[type=submit]");
  await logLoaded(page);

  await page.click("#wh-rotate");
  const rotated = await status(page, "ok", /^Secret rotated/);
  const newSecret = await page.inputValue("#webhook-secret-value");
  const rotatedText = await page.textContent("#webhook-secret-text");
  const previousUntil = await field(page, "Previous secret signs until");
  await page.click("#webhook-secret-done");
  const newSecretLeft = await secretInPage(newSecret);
  // The attempt log, opened by hand, stays open when the log is read again.
  await page.locator("#delivery-rows > tr details > summary").first().click();
  await page.click("#delivery-filters button[type=submit]");
  await logLoaded(page);
  const logOpen = await page.locator("#delivery-rows > tr details").first().evaluate((d) => d.open);
  const adminControls = await controls(page);
  const injected = await page.locator("#page-webhooks img").count();
  await screenshot(page);

  // A viewer reads everything but sees no control that writes.
  await signOut(page);
  const leftover = await page.evaluate((u) => document.querySelector("#app").textContent.includes(u) ||
    [...document.querySelectorAll("#page-webhooks input")].some((i) => i.value.includes(u) || i.defaultValue.includes(u)), receiverUrl);
  if (leftover) fail("the endpoint stayed in the page after signing out");
  await signIn(page, url, viewerToken);
  await openPage(page, "webhooks");
  await openEndpoint(page);
  await page.waitForSelector("#delivery-rows > tr");
  const viewerControls = await controls(page);
  const viewerWritable = await page.evaluate(() => document.querySelector("#page-webhooks").classList.contains("writable"));
  const viewerLog = await deliveries(page);
  const viewerList = await rows(page, "#webhook-rows");

  // Deleting takes a second step; cancelled, nothing happens.
  await signOut(page);
  await signIn(page, url, token);
  await openPage(page, "webhooks");
  await openEndpoint(page);
  await page.click("#wh-delete");
  await page.click("#wh-delete-no");
  const afterCancel = (await rows(page, "#webhook-rows")).length;
  await page.click("#wh-delete");
  await page.click("#wh-delete-yes");
  const deleted = await status(page, "ok", /^Deleted/);
  const emptyAfter = await page.isVisible("#webhooks-empty");
  const detailAfter = await page.isVisible("#webhook-detail");

  if (await page.title() === "owned") fail("a hostile value ran as script");
  return { refused, refused_form: refusedForm, url_invalid: urlInvalid, created, secret, secret_text: secretText,
           secret_focused: secretFocused, create_error_after: createErrorAfter, secret_left: secretLeft,
           secret_again: secretAgain, id, list, description, title, no_deliveries: noDeliveries, injected, dialogs,
           pinged, ping_shown: pingShown, ping_id: pingId, disabled, disabled_state: disabledState,
           disabled_row: disabledRow, enable_button: enableButton, enabled, enabled_state: enabledState,
           disable_button: disableButton, pattern_refused: patternRefused, pattern_error: patternError,
           pattern_invalid: patternInvalid, saved, types, types_row: typesRow, replay_refused: replayRefused,
           since_invalid: sinceInvalid, replayed, first_log: firstLog, retried, second_log: secondLog,
           failed_shown: failedShown, delivered_shown: deliveredShown, rotated, new_secret: newSecret,
           rotated_text: rotatedText, previous_until: previousUntil, new_secret_left: newSecretLeft, log_open: logOpen,
           admin_controls: adminControls, viewer_controls: viewerControls, viewer_writable: viewerWritable,
           viewer_log: viewerLog, viewer_list: viewerList, after_cancel: afterCancel, deleted,
           empty_after: emptyAfter, detail_after: detailAfter };
});
