// The Telegram Mini App of one shop: the customer's bonuses, code, promo code and history
// (/app/v1), and for the shop's staff a second tab that runs the shop (/admin/v1 with the same
// Telegram init data). No framework and no build step: Telegram's telegram-web-app.js, loaded
// before this file, is the bridge to the client. Every value from the server is written with
// textContent, never as markup.
"use strict";

(() => {
  const WebApp = window.Telegram && window.Telegram.WebApp;
  const ORG = (location.pathname.match(/^\/app\/(\d+)\//) || [])[1];
  const HISTORY_PAGE = 20;
  const AUDIT_PAGE = 30;

  // ---- language ---------------------------------------------------------------------------------

  const TEXT = {
    ru: {
      title: "Бонусы",
      loading: "Загрузка…",
      tab_customer: "Мои бонусы",
      tab_shop: "Магазин",
      balances: "Баланс",
      bonuses: "Бонусы",
      referral_bonuses: "За друзей",
      debt: "Долг",
      pending: (amount, date) => date ? `${amount} станут доступны ${date}` : `${amount} скоро станут доступны`,
      expiry: (amount, date) => `${amount} сгорят ${date}`,
      tier: (name, pct) => pct === null ? `Уровень: ${name}` : `Уровень: ${name}, ${pct} % с покупки`,
      next_tier: (name, rest) => `До уровня «${name}» осталось потратить ${rest}`,
      your_code: "Код для кассира",
      your_code_hint: "Покажите его на кассе, чтобы получить или потратить бонусы.",
      promo_title: "Промокод для друзей",
      promo_hint: (bonus, pct) => {
        const parts = [];
        if (bonus) parts.push(`друг получит ${bonus}`);
        if (pct) parts.push(`вы — ${pct} % от его первой покупки`);
        return parts.length ? `Поделитесь кодом: ${parts.join(", ")}.` : "Поделитесь кодом с друзьями.";
      },
      share: "Поделиться",
      share_text: (shop, code) => `Мой промокод в «${shop}»: ${code}. Открывайте по ссылке — бонусы начислятся сами.`,
      history: "История",
      history_empty: "Пока ничего нет.",
      contacts: "Контакты магазина",
      call: (phone) => `Позвонить ${phone}`,
      whatsapp: "WhatsApp",
      telegram: "Telegram",
      write_access_text: "Разрешите боту писать вам — будем сообщать о начислениях и сгорании бонусов.",
      write_access_button: "Разрешить сообщения",
      write_access_done: "Готово: теперь мы сможем вам написать.",
      welcome: (shop) => `Добро пожаловать в «${shop}»!`,
      referral_applied: (code, bonus) => bonus ? `Промокод друга ${code} применён: вам начислено ${bonus}.` : `Промокод друга ${code} применён.`,
      referral_refused: (code, reason) => `Промокод ${code} не применён: ${reason}`,
      not_in_telegram: "Откройте это приложение из бота магазина в Telegram.",
      unauthorized: "Не удалось подтвердить вход. Закройте приложение и откройте его снова из бота.",
      too_many: "Слишком много запросов. Подождите секунду и попробуйте снова.",
      offline: "Нет связи с сервером. Проверьте интернет и попробуйте снова.",
      failed: "Что-то пошло не так. Попробуйте позже.",
      search_label: "Телефон, имя или номер клиента",
      find: "Найти",
      scan: "Сканировать код клиента",
      scan_text: "Наведите камеру на код клиента",
      nothing_found: "Никого не нашли.",
      open_bills: "Открытые счета",
      staff: "Сотрудники",
      audit: "Журнал",
      settings: "Настройки",
      bonuses_action: "Бонусы",
      amount: "Сумма",
      reason: "Причина",
      accrue: "Начислить",
      deduct: "Списать",
      debt_add: "Добавить долг",
      debt_pay: "Погасить долг",
      new_bill: "Счёт для кассы",
      new_bill_hint: "Касса найдёт его по номеру; бонусы, которыми платит клиент, сразу зарезервированы.",
      bill_number: "Номер счёта (необязательно)",
      bill_total: "Сумма покупки",
      bill_bonus: "Оплатить бонусами",
      bill_item: "Покупка",
      create_bill: "Создать счёт",
      bill_created: (number) => `Счёт № ${number} создан — касса его увидит.`,
      accrued: (amount) => `Начислено ${amount}.`,
      deducted: (amount) => `Списано ${amount}.`,
      debt_added: (amount) => `Долг увеличен на ${amount}.`,
      debt_paid: (amount) => `Погашено ${amount} долга.`,
      bad_amount: "Введите сумму, например 150 или 150,50.",
      customer_no: (id) => `Клиент № ${id}`,
      bill_line: (number) => `Счёт № ${number}`,
      bill_sub: (customer, total, bonus) => bonus ? `клиент № ${customer} · ${total} · бонусами ${bonus}` : `клиент № ${customer} · ${total}`,
      cancel: "Отменить",
      cancelled: (number) => `Счёт № ${number} отменён.`,
      cancel_confirm: (number) => `Отменить счёт № ${number}? Касса его больше не увидит.`,
      no_open_bills: "Открытых счетов нет.",
      staff_add: "Добавить сотрудника",
      telegram_id: "Telegram ID",
      name: "Имя",
      role: "Роль",
      role_cashier: "Кассир",
      role_owner: "Владелец",
      add: "Добавить",
      remove: "Удалить",
      remove_confirm: (who) => `Удалить ${who} из сотрудников?`,
      staff_added: (who) => `${who} теперь сотрудник.`,
      role_changed: "Роль изменена.",
      staff_removed: "Сотрудник удалён.",
      audit_empty: "Записей пока нет.",
      more: "Показать ещё",
      set_invoice: "Бонусы с покупки, %",
      set_max_payment: "Сколько счёта можно оплатить бонусами, %",
      set_referrer: "Пригласившему от первой покупки друга, %",
      set_promo: "Бонус другу за промокод",
      save: "Сохранить",
      saved: "Настройки сохранены.",
      platform: "Оператор платформы",
      actions: {
        "customer.bonuses": "Бонусы начислены или списаны",
        "customer.debts": "Долг изменён",
        "customer.create": "Новый клиент",
        "customer.promo": "Промокод введён",
        "customer.birth_date": "Дата рождения",
        "customer.merge": "Клиенты объединены",
        "bill.create": "Счёт создан",
        "bill.cancel": "Счёт отменён",
        "staff.add": "Сотрудник добавлен",
        "staff.role": "Роль изменена",
        "staff.remove": "Сотрудник удалён",
        "org.update": "Настройки изменены",
        "integration.create": "Касса подключена",
      },
    },
    en: {
      title: "Bonuses",
      loading: "Loading…",
      tab_customer: "My bonuses",
      tab_shop: "Shop",
      balances: "Balance",
      bonuses: "Bonuses",
      referral_bonuses: "From friends",
      debt: "Debt",
      pending: (amount, date) => date ? `${amount} become available on ${date}` : `${amount} become available soon`,
      expiry: (amount, date) => `${amount} expire on ${date}`,
      tier: (name, pct) => pct === null ? `Level: ${name}` : `Level: ${name}, ${pct}% back`,
      next_tier: (name, rest) => `Spend ${rest} more to reach “${name}”`,
      your_code: "Code for the cashier",
      your_code_hint: "Show it at the till to earn or spend bonuses.",
      promo_title: "Promo code for friends",
      promo_hint: (bonus, pct) => {
        const parts = [];
        if (bonus) parts.push(`your friend gets ${bonus}`);
        if (pct) parts.push(`you get ${pct}% of their first purchase`);
        return parts.length ? `Share your code: ${parts.join(", ")}.` : "Share your code with friends.";
      },
      share: "Share",
      share_text: (shop, code) => `My promo code at “${shop}”: ${code}. Open the link and the bonus is yours.`,
      history: "History",
      history_empty: "Nothing yet.",
      contacts: "The shop's contacts",
      call: (phone) => `Call ${phone}`,
      whatsapp: "WhatsApp",
      telegram: "Telegram",
      write_access_text: "Let the bot message you: we will tell you about new and expiring bonuses.",
      write_access_button: "Allow messages",
      write_access_done: "Done: we can message you now.",
      welcome: (shop) => `Welcome to “${shop}”!`,
      referral_applied: (code, bonus) => bonus ? `Your friend's code ${code} is applied: you got ${bonus}.` : `Your friend's code ${code} is applied.`,
      referral_refused: (code, reason) => `The code ${code} was not applied: ${reason}`,
      not_in_telegram: "Open this app from the shop's bot in Telegram.",
      unauthorized: "We could not confirm who you are. Close the app and open it again from the bot.",
      too_many: "Too many requests. Wait a second and try again.",
      offline: "No connection to the server. Check the internet and try again.",
      failed: "Something went wrong. Please try again later.",
      search_label: "Phone, name or customer number",
      find: "Find",
      scan: "Scan the customer's code",
      scan_text: "Point the camera at the customer's code",
      nothing_found: "Nobody found.",
      open_bills: "Open bills",
      staff: "Staff",
      audit: "Audit trail",
      settings: "Settings",
      bonuses_action: "Bonuses",
      amount: "Amount",
      reason: "Reason",
      accrue: "Accrue",
      deduct: "Deduct",
      debt_add: "Add debt",
      debt_pay: "Settle debt",
      new_bill: "Bill for the till",
      new_bill_hint: "The till finds it by its number; the bonuses the customer pays with are held at once.",
      bill_number: "Bill number (optional)",
      bill_total: "Purchase total",
      bill_bonus: "Pay with bonuses",
      bill_item: "Purchase",
      create_bill: "Create the bill",
      bill_created: (number) => `Bill no. ${number} created: the till will see it.`,
      accrued: (amount) => `Accrued ${amount}.`,
      deducted: (amount) => `Deducted ${amount}.`,
      debt_added: (amount) => `Debt increased by ${amount}.`,
      debt_paid: (amount) => `${amount} of the debt paid.`,
      bad_amount: "Enter an amount, e.g. 150 or 150.50.",
      customer_no: (id) => `Customer no. ${id}`,
      bill_line: (number) => `Bill no. ${number}`,
      bill_sub: (customer, total, bonus) => bonus ? `customer no. ${customer} · ${total} · bonuses ${bonus}` : `customer no. ${customer} · ${total}`,
      cancel: "Cancel",
      cancelled: (number) => `Bill no. ${number} cancelled.`,
      cancel_confirm: (number) => `Cancel bill no. ${number}? The till will no longer see it.`,
      no_open_bills: "No open bills.",
      staff_add: "Add a staff member",
      telegram_id: "Telegram ID",
      name: "Name",
      role: "Role",
      role_cashier: "Cashier",
      role_owner: "Owner",
      add: "Add",
      remove: "Remove",
      remove_confirm: (who) => `Remove ${who} from the staff?`,
      staff_added: (who) => `${who} is now on the staff.`,
      role_changed: "Role changed.",
      staff_removed: "Removed from the staff.",
      audit_empty: "No entries yet.",
      more: "Show more",
      set_invoice: "Bonuses per purchase, %",
      set_max_payment: "Share of a bill payable with bonuses, %",
      set_referrer: "To the referrer, of a friend's first purchase, %",
      set_promo: "Bonus for a friend's promo code",
      save: "Save",
      saved: "Settings saved.",
      platform: "Platform operator",
      actions: {
        "customer.bonuses": "Bonuses accrued or deducted",
        "customer.debts": "Debt changed",
        "customer.create": "New customer",
        "customer.promo": "Promo code entered",
        "customer.birth_date": "Birth date",
        "customer.merge": "Customers merged",
        "bill.create": "Bill created",
        "bill.cancel": "Bill cancelled",
        "staff.add": "Staff member added",
        "staff.role": "Role changed",
        "staff.remove": "Staff member removed",
        "org.update": "Settings changed",
        "integration.create": "Till connected",
      },
    },
  };

  const unsafe = (WebApp && WebApp.initDataUnsafe) || {};
  const user = unsafe.user || {};
  const LANG = String(user.language_code || "").toLowerCase().startsWith("en") ? "en" : "ru";
  const LOCALE = LANG === "en" ? "en-US" : "ru-RU";
  const T = TEXT[LANG];

  const $ = (id) => document.getElementById(id);

  function translatePage() {
    document.documentElement.lang = LANG;
    document.title = T.title;
    for (const node of document.querySelectorAll("[data-i18n]")) {
      const text = T[node.dataset.i18n];
      if (typeof text === "string") node.textContent = text;
    }
  }

  // ---- numbers and dates, as people read them ---------------------------------------------------

  let currency = "";
  const whole = new Intl.NumberFormat(LOCALE, { maximumFractionDigits: 0 });
  const cents = new Intl.NumberFormat(LOCALE, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  const percent = new Intl.NumberFormat(LOCALE, { maximumFractionDigits: 2 });

  /** `1 234,56 ₸` (ru) or `1,234.56 ₸` (en); whole amounts without decimals. */
  function money(value) {
    const n = Number(value);
    if (!Number.isFinite(n)) return "—";
    const text = (Number.isInteger(n) ? whole : cents).format(n);
    return currency ? `${text}\u00a0${currency}` : text;
  }

  const dateTime = new Intl.DateTimeFormat(LOCALE, { day: "numeric", month: "long", hour: "2-digit", minute: "2-digit" });
  const dateTimeYear = new Intl.DateTimeFormat(LOCALE, { day: "numeric", month: "long", year: "numeric", hour: "2-digit", minute: "2-digit" });
  const dayOnly = new Intl.DateTimeFormat(LOCALE, { day: "numeric", month: "long", year: "numeric", timeZone: "UTC" });

  function when(text) {
    const date = new Date(text);
    if (Number.isNaN(date.getTime())) return String(text || "");
    return (date.getFullYear() === new Date().getFullYear() ? dateTime : dateTimeYear).format(date);
  }

  /** A calendar day (`2026-12-10`) as that day, whatever the device's time zone. */
  function day(text) {
    const date = new Date(`${String(text).slice(0, 10)}T00:00:00Z`);
    return Number.isNaN(date.getTime()) ? String(text || "") : dayOnly.format(date);
  }

  /** What a person typed as an amount (`1 234,5`), as the API's decimal text, or null. */
  function amountInput(text) {
    const clean = String(text || "").replace(/[\s\u00a0\u202f]/g, "").replace(",", ".");
    return /^\d{1,12}(\.\d{1,2})?$/.test(clean) && Number(clean) > 0 ? clean : null;
  }

  // ---- Telegram ---------------------------------------------------------------------------------

  const supports = (version) => !!(WebApp && WebApp.isVersionAtLeast && WebApp.isVersionAtLeast(version));

  function haptic(kind) {
    const feedback = WebApp && WebApp.HapticFeedback;
    if (!feedback || !supports("6.1")) return;
    if (kind === "tap") feedback.impactOccurred("light");
    else feedback.notificationOccurred(kind);
  }

  /** The theme's colours as CSS variables (telegram-web-app.js sets the same; doing it here too
   *  keeps the page right on a client whose script version sets fewer of them). */
  function applyTheme() {
    const root = document.documentElement;
    const params = (WebApp && WebApp.themeParams) || {};
    for (const [key, value] of Object.entries(params)) {
      if (typeof value === "string" && /^#[0-9a-f]{3,8}$/i.test(value)) {
        root.style.setProperty(`--tg-theme-${key.replace(/_/g, "-")}`, value);
      }
    }
    const scheme = WebApp && WebApp.colorScheme === "dark" ? "dark" : "light";
    root.dataset.scheme = scheme;
    root.style.colorScheme = scheme;
    // Telegram's own header and background around the page in the page's background colour.
    if (supports("6.1")) {
      if (WebApp.setHeaderColor) WebApp.setHeaderColor("secondary_bg_color");
      if (WebApp.setBackgroundColor) WebApp.setBackgroundColor("secondary_bg_color");
    }
  }

  // ---- the API ----------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, { method = "GET", body, idempotent = false, raw = false } = {}) {
    const headers = { Authorization: `tma ${WebApp.initData}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    // One key per tap: a second delivery of the same tap is answered from the first.
    if (idempotent) headers["Idempotency-Key"] = crypto.randomUUID();
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (error) {
      throw new ApiError(0, "offline", T.offline);
    }
    if (raw && response.ok) return response;
    const answer = await response.json().catch(() => null);
    if (!response.ok) {
      const detail = answer && answer.error ? answer.error : {};
      throw new ApiError(response.status, detail.code || "", detail.message || "");
    }
    return answer;
  }

  const app = (path) => `/app/v1/orgs/${ORG}${path}`;
  const admin = (path) => `/admin/v1/orgs/${ORG}${path}`;

  /** A line a person can read for a failure; the staff see the server's own message. */
  function explain(error, forStaff) {
    if (!(error instanceof ApiError)) return T.failed;
    if (error.status === 0) return T.offline;
    if (error.status === 401) return T.unauthorized;
    if (error.status === 429) return T.too_many;
    if (forStaff && error.status >= 400 && error.status < 500 && error.message) {
      return `${error.status}: ${error.message}`;
    }
    return T.failed;
  }

  function showStatus(message) {
    const status = $("status");
    status.textContent = message || "";
    status.hidden = !message;
    if (message) status.scrollIntoView({ block: "nearest" });
  }

  function fail(error, forStaff) {
    if (!(error instanceof ApiError)) console.warn(error);
    haptic("error");
    showStatus(explain(error, forStaff));
  }

  /** Runs `action` with every button of `scope` disabled, so a tap cannot start it twice. */
  async function busy(scope, action) {
    const buttons = [...scope.querySelectorAll("button")];
    if (scope instanceof HTMLButtonElement) buttons.push(scope);
    if (buttons.some((b) => b.disabled)) return;
    for (const button of buttons) button.disabled = true;
    try {
      await action();
    } finally {
      for (const button of buttons) button.disabled = false;
    }
  }

  // ---- DOM helpers ------------------------------------------------------------------------------

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  /** An https link as given by the shop (`wa.me/…`, `@shop`, `https://t.me/…`), or null. */
  function webLink(text, telegram) {
    let value = String(text || "").trim();
    if (!value) return null;
    if (telegram && /^@[A-Za-z0-9_]{3,}$/.test(value)) value = `https://t.me/${value.slice(1)}`;
    if (!/^[a-z]+:\/\//i.test(value)) value = `https://${value}`;
    try {
      const url = new URL(value);
      return url.protocol === "https:" || url.protocol === "http:" ? url : null;
    } catch {
      return null;
    }
  }

  function isTelegramHost(url) {
    return ["t.me", "telegram.me"].includes(url.hostname.toLowerCase());
  }

  function openExternal(url) {
    haptic("tap");
    if (isTelegramHost(url) && WebApp.openTelegramLink) WebApp.openTelegramLink(url.href);
    else if (WebApp.openLink) WebApp.openLink(url.href);
    else window.open(url.href, "_blank", "noopener");
  }

  // ---- the customer -----------------------------------------------------------------------------

  let me = null;

  function renderMe() {
    $("shop-name").textContent = (me.organization && me.organization.name) || T.title;
    $("balance-bonuses").textContent = money(me.bonuses);
    $("balance-referral").textContent = money(me.referral_bonuses);
    $("balance-debt").textContent = money(me.debts);
    $("debt-row").classList.toggle("owed", Number(me.debts) > 0);

    const soon = $("soon");
    soon.replaceChildren();
    const pending = me.pending_bonuses;
    if (pending && Number(pending.total) > 0) {
      const first = Array.isArray(pending.lots) && pending.lots[0];
      soon.append(el("li", T.pending(money(pending.total), first && first.activates_at ? when(first.activates_at) : null), "pending"));
    }
    if (me.next_expiry && Number(me.next_expiry.amount) > 0) {
      soon.append(el("li", T.expiry(money(me.next_expiry.amount), day(me.next_expiry.date)), "expiry"));
    }
    if (me.tier && me.tier.name) {
      const pct = me.tier.percentage === undefined || me.tier.percentage === null ? null : percent.format(Number(me.tier.percentage));
      soon.append(el("li", T.tier(me.tier.name, pct), "tier"));
    }
    if (me.next_tier && me.next_tier.name) {
      soon.append(el("li", T.next_tier(me.next_tier.name, money(me.next_tier.rest)), "next-tier"));
    }
    soon.hidden = soon.childElementCount === 0;

    $("code-digits").textContent = String(me.id || "");

    const settings = me.bonus_program_settings || {};
    const promoBonus = Number(settings.referral_promo_bonus) > 0 ? money(settings.referral_promo_bonus) : null;
    const promoPct = Number(settings.referrer_first_purchase_percentage) > 0
      ? percent.format(Number(settings.referrer_first_purchase_percentage)) : null;
    $("promo-hint").textContent = T.promo_hint(promoBonus, promoPct);
    $("promo-code").textContent = String(me.referral_code || "");
    $("share").hidden = !me.share_link;

    renderReferral(promoBonus);
    renderContacts();
    $("write-access").hidden = !(me.can_message === false && supports("6.9") && WebApp.requestWriteAccess);
  }

  function renderReferral(promoBonus) {
    const note = $("referral");
    const referral = me.referral;
    if (!referral || !referral.code) {
      note.hidden = true;
      return;
    }
    const shop = (me.organization && me.organization.name) || "";
    const line = referral.applied
      ? T.referral_applied(referral.code, promoBonus)
      : T.referral_refused(referral.code, referral.reason || referral.error || "");
    note.textContent = shop ? `${T.welcome(shop)} ${line}` : line;
    note.classList.toggle("warn", !referral.applied);
    note.hidden = false;
    haptic(referral.applied ? "success" : "warning");
  }

  function renderContacts() {
    const org = me.organization || {};
    const links = $("contact-links");
    links.replaceChildren();
    for (const phone of Array.isArray(org.phone_numbers) ? org.phone_numbers : []) {
      const digits = String(phone).replace(/[^\d+]/g, "");
      if (!digits) continue;
      const a = el("a", T.call(phone), "call");
      a.href = `tel:${digits}`;
      links.append(a);
    }
    for (const [field, label, telegram] of [["whatsapp_link", T.whatsapp, false], ["telegram_link", T.telegram, true]]) {
      const url = webLink(org[field], telegram);
      if (!url) continue;
      const a = el("a", label, field.replace("_link", ""));
      a.href = url.href;
      a.rel = "noopener noreferrer";
      a.target = "_blank";
      a.addEventListener("click", (event) => {
        event.preventDefault();
        openExternal(url);
      });
      links.append(a);
    }
    $("address").textContent = org.address || "";
    $("address").hidden = !org.address;
    $("contacts").hidden = links.childElementCount === 0 && !org.address;
  }

  async function loadCode() {
    const image = $("code-image");
    try {
      const response = await api(app("/me/code.svg"), { raw: true });
      const blob = await response.blob();
      if (image.src.startsWith("blob:")) URL.revokeObjectURL(image.src);
      image.src = URL.createObjectURL(blob);
      image.alt = T.your_code;
      image.hidden = false;
    } catch (error) {
      // The digits below say the same; the picture is a convenience.
      image.hidden = true;
    }
  }

  function share() {
    if (!me || !me.share_link) return;
    haptic("tap");
    const shop = (me.organization && me.organization.name) || "";
    const url = `https://t.me/share/url?url=${encodeURIComponent(me.share_link)}&text=${encodeURIComponent(T.share_text(shop, me.referral_code))}`;
    if (WebApp.openTelegramLink) WebApp.openTelegramLink(url);
    else window.open(url, "_blank", "noopener");
  }

  function askWriteAccess() {
    haptic("tap");
    WebApp.requestWriteAccess(async (granted) => {
      if (!granted) return;
      try {
        const answer = await api(app("/me/write-access"), { method: "POST", body: { granted: true } });
        me.can_message = !!(answer && answer.can_message);
        $("write-access").hidden = me.can_message;
        const note = $("referral");
        note.textContent = T.write_access_done;
        note.classList.remove("warn");
        note.hidden = false;
        haptic("success");
      } catch (error) {
        fail(error, false);
      }
    });
  }

  // The history, a page at a time as the end of the list comes into view.
  const history = { before: null, done: false, loading: false };

  function historyRow(entry) {
    const li = el("li");
    const out = entry.type === "deduction" || entry.type === "payment";
    li.append(el("span", entry.description || "", "what"));
    li.append(el("span", `${out ? "−" : "+"}${money(Math.abs(Number(entry.amount)))}`, `amount ${out ? "minus" : "plus"}`));
    li.append(el("span", when(entry.date), "when"));
    return li;
  }

  async function loadHistory() {
    if (history.loading || history.done) return;
    history.loading = true;
    $("history-more").hidden = false;
    try {
      const query = new URLSearchParams({ limit: String(HISTORY_PAGE) });
      if (history.before) query.set("before", history.before);
      const page = await api(app(`/me/history?${query}`));
      const list = $("history");
      for (const entry of page.items || []) list.append(historyRow(entry));
      history.before = page.next_before || null;
      history.done = !history.before;
      $("history-empty").hidden = list.childElementCount > 0;
      list.dataset.pages = String(Number(list.dataset.pages || 0) + 1);
    } catch (error) {
      history.done = true;
      fail(error, false);
    } finally {
      history.loading = false;
      $("history-more").hidden = true;
    }
    // A short first page may leave the sentinel in view: the observer fires only on a change.
    if (!history.done && isVisible($("history-end"))) loadHistory();
  }

  function isVisible(node) {
    const box = node.getBoundingClientRect();
    return box.top < window.innerHeight && box.bottom >= 0;
  }

  // ---- the shop: screens and the back button ---------------------------------------------------

  let role = null;
  let screen = "home";
  let current = null; // the customer on the card
  const backStack = [];

  function showTab(tab) {
    const shop = tab === "shop";
    $("customer-view").hidden = shop;
    $("shop-view").hidden = !shop;
    $("tab-customer").setAttribute("aria-pressed", String(!shop));
    $("tab-shop").setAttribute("aria-pressed", String(shop));
    document.body.dataset.tab = tab;
    showStatus("");
    updateBackButton();
  }

  function goto(name, push = true) {
    if (push && name !== screen) backStack.push(screen);
    screen = name;
    for (const section of document.querySelectorAll("#shop-view [data-screen]")) {
      section.hidden = section.dataset.screen !== name;
    }
    document.body.dataset.screen = name;
    showStatus("");
    $("card-done").hidden = true;
    updateBackButton();
    window.scrollTo(0, 0);
    if (name === "bills") loadBills();
    if (name === "staff") loadStaff();
    if (name === "audit") loadStaffNames().then(() => loadAudit(true));
    if (name === "settings") loadSettings();
  }

  function back() {
    haptic("tap");
    goto(backStack.pop() || "home", false);
  }

  function updateBackButton() {
    const button = WebApp && WebApp.BackButton;
    if (!button || !supports("6.1")) return;
    const inShop = !$("shop-view").hidden;
    if (inShop && screen !== "home") button.show();
    else button.hide();
  }

  /** A success line at the top of the screen in view. */
  function done(message) {
    haptic("success");
    showStatus("");
    const line = $("card-done");
    line.textContent = message;
    line.hidden = false;
    const section = document.querySelector(`#shop-view [data-screen="${screen}"]`);
    if (section && line.parentElement !== section) section.prepend(line);
  }

  // ---- the shop: finding a customer ------------------------------------------------------------

  async function search(q) {
    const list = $("results");
    list.replaceChildren();
    $("results-empty").hidden = true;
    const page = await api(admin(`/customers?${new URLSearchParams({ q, limit: "20" })}`));
    for (const found of page.items || []) {
      const li = el("li", null, "pick");
      li.dataset.id = String(found.id);
      li.tabIndex = 0;
      const name = [found.first_name, found.last_name].filter(Boolean).join(" ") || T.customer_no(found.id);
      const line = el("div", null, "line");
      line.append(el("span", name, "title"), el("span", money(found.bonuses), "sub"));
      li.append(line);
      li.append(el("div", [T.customer_no(found.id), found.phone_number, found.username ? `@${found.username}` : null].filter(Boolean).join(" · "), "sub"));
      li.addEventListener("click", () => openCustomer(found.id));
      li.addEventListener("keydown", (event) => {
        if (event.key === "Enter") openCustomer(found.id);
      });
      list.append(li);
    }
    $("results-empty").hidden = list.childElementCount > 0;
  }

  function scan() {
    haptic("tap");
    WebApp.showScanQrPopup({ text: T.scan_text }, (text) => {
      const id = String(text || "").trim();
      if (!/^\d{1,19}$/.test(id)) return false; // not a customer's code: keep scanning
      // Closing from inside the callback is what the client expects (returning true does too).
      if (WebApp.closeScanQrPopup) WebApp.closeScanQrPopup();
      openCustomer(id);
      return true;
    });
  }

  async function openCustomer(id) {
    haptic("tap");
    try {
      current = await api(admin(`/customers/${encodeURIComponent(id)}`));
      renderCard();
      for (const form of ["bonus-form", "debt-form", "bill-form"]) $(form).reset();
      goto("customer");
    } catch (error) {
      fail(error, true);
    }
  }

  function renderCard() {
    const name = [current.first_name, current.last_name].filter(Boolean).join(" ") || T.customer_no(current.id);
    $("card-name").textContent = name;
    $("card-meta").textContent = [T.customer_no(current.id), current.phone_number, current.username ? `@${current.username}` : null]
      .filter(Boolean).join(" · ");
    $("card-bonuses").textContent = money(current.bonuses);
    $("card-referral").textContent = money(current.referral_bonuses);
    $("card-debt").textContent = money(current.debts);
    document.querySelector("[data-screen=customer]").dataset.customer = String(current.id);
  }

  async function refreshCard() {
    current = await api(admin(`/customers/${encodeURIComponent(current.id)}`));
    renderCard();
  }

  // ---- the shop: acting on the customer ---------------------------------------------------------

  function amountOf(input) {
    const amount = amountInput(input.value);
    if (!amount) {
      input.focus();
      throw new ApiError(422, "invalid", T.bad_amount);
    }
    return amount;
  }

  async function act(form, action) {
    await busy(form, async () => {
      let message;
      try {
        message = await action();
      } catch (error) {
        fail(error, true);
        return;
      }
      form.reset();
      try {
        await refreshCard();
      } catch (error) {
        fail(error, true);
        return;
      }
      done(message);
    });
  }

  function onBonus(event) {
    event.preventDefault();
    const op = event.submitter && event.submitter.dataset.op === "deduct" ? "deduct" : "accrue";
    const form = event.currentTarget;
    act(form, async () => {
      const amount = amountOf($("bonus-amount"));
      const body = { op, amount };
      const reason = $("bonus-reason").value.trim();
      if (reason) body.description = reason;
      await api(admin(`/customers/${current.id}/bonuses`), { method: "POST", body, idempotent: true });
      return op === "accrue" ? T.accrued(money(amount)) : T.deducted(money(amount));
    });
  }

  function onDebt(event) {
    event.preventDefault();
    const op = event.submitter && event.submitter.dataset.op === "add" ? "add" : "pay";
    const form = event.currentTarget;
    act(form, async () => {
      const amount = amountOf($("debt-amount"));
      await api(admin(`/customers/${current.id}/debts`), { method: "POST", body: { op, amount }, idempotent: true });
      return op === "add" ? T.debt_added(money(amount)) : T.debt_paid(money(amount));
    });
  }

  function onBill(event) {
    event.preventDefault();
    const form = event.currentTarget;
    act(form, async () => {
      const total = amountOf($("bill-total"));
      const body = {
        customer_id: String(current.id),
        items: [{ name: T.bill_item, quantity: 1, unit_price: total }],
      };
      const number = $("bill-number").value.trim();
      if (number) body.number = number;
      if ($("bill-bonus").value.trim()) {
        body.bonus_payment = { amount: amountOf($("bill-bonus")), wallet: "main" };
      }
      const bill = await api(admin("/bills"), { method: "POST", body, idempotent: true });
      return T.bill_created(bill.number || bill.id);
    });
  }

  // ---- the shop: open bills ----------------------------------------------------------------------

  async function loadBills() {
    const list = $("bills");
    list.replaceChildren();
    $("bills-empty").hidden = true;
    try {
      const page = await api(admin("/bills?status=open"));
      for (const bill of page.items || []) {
        const li = el("li");
        li.dataset.id = String(bill.id);
        const line = el("div", null, "line");
        line.append(el("span", T.bill_line(bill.number), "title"));
        const cancel = el("button", T.cancel, "danger");
        cancel.type = "button";
        cancel.addEventListener("click", () => cancelBill(bill, cancel));
        line.append(cancel);
        li.append(line);
        const bonus = bill.bonus_payment && Number(bill.bonus_payment.amount) > 0 ? money(bill.bonus_payment.amount) : null;
        li.append(el("div", T.bill_sub(bill.customer_id, money(bill.total), bonus), "sub"));
        li.append(el("div", when(bill.created_at), "sub"));
        list.append(li);
      }
      $("bills-empty").hidden = list.childElementCount > 0;
    } catch (error) {
      fail(error, true);
    }
  }

  async function cancelBill(bill, button) {
    if (!(await confirmed(T.cancel_confirm(bill.number)))) return;
    busy(button, async () => {
      try {
        await api(admin(`/bills/${bill.id}`), { method: "DELETE" });
        await loadBills();
        done(T.cancelled(bill.number));
      } catch (error) {
        fail(error, true);
      }
    });
  }

  // ---- the shop: the owner's staff, audit trail and settings ---------------------------------------

  const itemsOf = (answer) => (Array.isArray(answer) ? answer : (answer && answer.items) || []);

  const staffNames = new Map();

  async function loadStaff() {
    const list = $("staff-list");
    list.replaceChildren();
    try {
      for (const member of itemsOf(await api(admin("/staff")))) {
        if (member.name) staffNames.set(String(member.telegram_id), member.name);
        const li = el("li");
        li.dataset.id = String(member.telegram_id);
        const line = el("div", null, "line");
        line.append(el("span", member.name || String(member.telegram_id), "title"));
        const select = el("select");
        select.setAttribute("aria-label", T.role);
        for (const value of ["cashier", "owner"]) {
          const option = el("option", value === "owner" ? T.role_owner : T.role_cashier);
          option.value = value;
          option.selected = member.role === value;
          select.append(option);
        }
        select.addEventListener("change", () => changeRole(member, select));
        line.append(select);
        li.append(line);
        const sub = el("div", null, "line");
        sub.append(el("span", `ID ${member.telegram_id}`, "sub"));
        const remove = el("button", T.remove, "danger");
        remove.type = "button";
        remove.addEventListener("click", () => removeStaff(member, remove));
        sub.append(remove);
        li.append(sub);
        list.append(li);
      }
    } catch (error) {
      fail(error, true);
    }
  }

  async function changeRole(member, select) {
    select.disabled = true;
    try {
      await api(admin(`/staff/${member.telegram_id}`), { method: "PATCH", body: { role: select.value }, idempotent: true });
      done(T.role_changed);
      member.role = select.value;
    } catch (error) {
      select.value = member.role;
      fail(error, true);
    } finally {
      select.disabled = false;
    }
  }

  function confirmed(message) {
    return new Promise((resolve) => {
      if (WebApp.showConfirm && supports("6.2")) WebApp.showConfirm(message, (ok) => resolve(!!ok));
      else resolve(window.confirm(message));
    });
  }

  async function removeStaff(member, button) {
    if (!(await confirmed(T.remove_confirm(member.name || member.telegram_id)))) return;
    busy(button, async () => {
      try {
        await api(admin(`/staff/${member.telegram_id}`), { method: "DELETE" });
        await loadStaff();
        done(T.staff_removed);
      } catch (error) {
        fail(error, true);
      }
    });
  }

  function onAddStaff(event) {
    event.preventDefault();
    const form = event.currentTarget;
    busy(form, async () => {
      try {
        const id = $("staff-id").value.trim();
        if (!/^\d{1,19}$/.test(id)) throw new ApiError(422, "invalid", `${T.telegram_id}: 123456789`);
        const body = { telegram_id: Number(id), role: $("staff-role").value };
        const name = $("staff-name").value.trim();
        if (name) body.name = name;
        await api(admin("/staff"), { method: "POST", body, idempotent: true });
        form.reset();
        await loadStaff();
        done(T.staff_added(name || id));
      } catch (error) {
        fail(error, true);
      }
    });
  }

  /** The staff's names, so the trail says who rather than `staff:<id>`. */
  async function loadStaffNames() {
    try {
      for (const member of itemsOf(await api(admin("/staff")))) {
        if (member.name) staffNames.set(String(member.telegram_id), member.name);
      }
    } catch (error) {
      // The trail still names everyone by id.
    }
  }

  const audit = { next: null };

  async function loadAudit(fresh) {
    const list = $("audit");
    if (fresh) {
      list.replaceChildren();
      audit.next = null;
    }
    const query = new URLSearchParams({ limit: String(AUDIT_PAGE) });
    if (audit.next !== null) query.set(audit.cursor, String(audit.next));
    try {
      const page = await api(admin(`/audit?${query}`));
      for (const entry of itemsOf(page)) list.append(auditRow(entry));
      // Paged by offset or by a cursor, whichever the answer carries.
      if (page && page.next_offset !== undefined && page.next_offset !== null) {
        audit.cursor = "offset";
        audit.next = page.next_offset;
      } else if (page && page.next_before) {
        audit.cursor = "before";
        audit.next = page.next_before;
      } else {
        audit.next = null;
      }
      $("audit-more").hidden = audit.next === null;
      $("audit-empty").hidden = list.childElementCount > 0;
    } catch (error) {
      fail(error, true);
    }
  }

  /** Who did it: a staff member by the name the owner gave them, else as the trail names them. */
  function actorName(actor) {
    const match = /^staff:(\d+)$/.exec(String(actor || ""));
    const member = match && staffNames.get(match[1]);
    if (actor === "platform") return T.platform;
    return member || String(actor || "");
  }

  /** The request's plain fields (`op: accrue · amount: 100`), for the trail. */
  function detailLine(detail) {
    if (!detail || typeof detail !== "object") return detail ? String(detail) : "";
    return Object.entries(detail)
      .filter(([, value]) => value !== null && typeof value !== "object")
      .map(([key, value]) => `${key}: ${value}`)
      .join(" · ");
  }

  function auditRow(entry) {
    const li = el("li");
    li.append(el("div", T.actions[entry.action] || entry.action || "", "title"));
    const parts = [actorName(entry.actor), entry.at ? when(entry.at) : null];
    if (entry.customer_id) parts.push(T.customer_no(entry.customer_id));
    li.append(el("div", parts.filter(Boolean).join(" · "), "sub"));
    const details = detailLine(entry.detail);
    if (details) li.append(el("div", details, "sub"));
    return li;
  }

  const SETTINGS = {
    "set-invoice": "invoice_bonus_percentage",
    "set-max-payment": "max_bonus_payment_percentage",
    "set-referrer": "referrer_first_purchase_percentage",
    "set-promo": "referral_promo_bonus",
  };

  async function loadSettings() {
    try {
      const org = await api(admin(""));
      const settings = org.bonus_program_settings || {};
      for (const [input, field] of Object.entries(SETTINGS)) {
        const value = settings[field] === undefined || settings[field] === null ? "" : String(settings[field]);
        // Written as the person writes it: a decimal comma in Russian (read back either way).
        $(input).value = LANG === "ru" ? value.replace(".", ",") : value;
      }
    } catch (error) {
      fail(error, true);
    }
  }

  function onSettings(event) {
    event.preventDefault();
    const form = event.currentTarget;
    busy(form, async () => {
      try {
        const settings = {};
        for (const [input, field] of Object.entries(SETTINGS)) {
          const clean = $(input).value.replace(/[\s\u00a0\u202f]/g, "").replace(",", ".");
          if (!/^\d{1,12}(\.\d{1,2})?$/.test(clean)) {
            $(input).focus();
            throw new ApiError(422, "invalid", T.bad_amount);
          }
          settings[field] = clean;
        }
        await api(admin(""), { method: "PATCH", body: { bonus_program_settings: settings } });
        await loadSettings();
        done(T.saved);
      } catch (error) {
        fail(error, true);
      }
    });
  }

  // ---- start ------------------------------------------------------------------------------------

  function wire() {
    $("share").addEventListener("click", share);
    $("write-access-button").addEventListener("click", askWriteAccess);
    $("tab-customer").addEventListener("click", () => { haptic("tap"); showTab("customer"); });
    $("tab-shop").addEventListener("click", () => { haptic("tap"); showTab("shop"); });
    $("search-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const q = $("search-q").value.trim();
      if (!q) return;
      busy(event.currentTarget, async () => {
        try {
          await search(q);
        } catch (error) {
          fail(error, true);
        }
      });
    });
    $("scan").addEventListener("click", scan);
    $("bonus-form").addEventListener("submit", onBonus);
    $("debt-form").addEventListener("submit", onDebt);
    $("bill-form").addEventListener("submit", onBill);
    $("staff-form").addEventListener("submit", onAddStaff);
    $("settings-form").addEventListener("submit", onSettings);
    $("audit-more").addEventListener("click", (event) => busy(event.currentTarget, () => loadAudit(false)));
    for (const button of document.querySelectorAll("[data-goto]")) {
      button.addEventListener("click", () => { haptic("tap"); goto(button.dataset.goto); });
    }
    if (WebApp.BackButton && supports("6.1")) WebApp.BackButton.onClick(back);
    if (WebApp.onEvent) WebApp.onEvent("themeChanged", applyTheme);
    new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) loadHistory();
    }, { rootMargin: "200px" }).observe($("history-end"));
  }

  function startStaff() {
    role = me.staff_role === "owner" || me.staff_role === "cashier" ? me.staff_role : null;
    if (!role) return;
    $("tabs").hidden = false;
    document.body.dataset.role = role;
    for (const node of document.querySelectorAll(".owner-only")) node.hidden = role !== "owner";
    $("scan").hidden = !(WebApp.showScanQrPopup && supports("6.4"));
  }

  async function start() {
    translatePage();
    if (!WebApp || !WebApp.initData || !ORG) {
      $("loading").hidden = true;
      showStatus(T.not_in_telegram);
      return;
    }
    applyTheme();
    WebApp.expand();
    try {
      me = await api(app("/me"));
      currency = (me.organization && me.organization.currency_symbol) || "";
      renderMe();
      startStaff();
      $("customer-view").hidden = false;
      document.body.dataset.tab = "customer";
      wire();
      loadCode();
      document.body.dataset.loaded = "true";
    } catch (error) {
      fail(error, false);
    } finally {
      $("loading").hidden = true;
      // Telegram hides its placeholder now: the first screen, or the line saying what went wrong.
      WebApp.ready();
    }
  }

  start();
})();
