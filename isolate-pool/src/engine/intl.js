// isogate's Intl: the ECMA-402 surface Workers use most, formatting as the `en-US` locale in the
// `UTC` time zone (QuickJS has no Intl and no locale data; isogate runs in UTC). Compiled to
// bytecode by build.rs and loaded into an isolate the first time its Worker touches `Intl` or a
// `toLocale*String` method (see bootstrap.js, "Intl").
//
// What is here: NumberFormat (decimal, percent, currency, unit; digits options; grouping; compact,
// scientific and engineering notation; signDisplay; formatToParts; BigInt), DateTimeFormat
// (dateStyle/timeStyle and the component options, hour12/hourCycle, timeZoneName, formatToParts,
// formatRange), PluralRules (English cardinal/ordinal), RelativeTimeFormat, ListFormat, Collator,
// getCanonicalLocales/supportedValuesOf. Every locale formats as en-US and resolvedOptions()
// says so; a timeZone other than UTC is a RangeError (no zone database in the isolate).
// Documented in README ("Web APIs").

const LOCALE = "en-US";
const NumberCtor = Number;
const StringCtor = String;
const MathAbs = Math.abs;
const MathFloor = Math.floor;
const MathLog10 = Math.log10;
const MathPow = Math.pow;
const MathRound = Math.round;
const MathTrunc = Math.trunc;
const TypeErrorCtor = TypeError;
const RangeErrorCtor = RangeError;
const ObjectFreeze = Object.freeze;
const ObjectDefineProperty = Object.defineProperty;
const DateCtor = Date;
const DateGetTime = Date.prototype.getTime;

function canonicalLocales(locales) {
  if (locales === undefined) return [];
  const list = typeof locales === "string" ? [locales] : Array.from(locales);
  const out = [];
  for (const tag of list) {
    if (typeof tag !== "string" && (typeof tag !== "object" || tag === null)) {
      throw new TypeErrorCtor("Intl: a locale must be a string");
    }
    const s = StringCtor(tag);
    if (!/^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$/.test(s)) {
      throw new RangeErrorCtor(`Intl: incorrect locale information provided: ${s}`);
    }
    const parts = s.split("-");
    parts[0] = parts[0].toLowerCase();
    for (let i = 1; i < parts.length; i++) {
      if (parts[i].length === 2) parts[i] = parts[i].toUpperCase();
      else if (parts[i].length === 4) parts[i] = parts[i][0].toUpperCase() + parts[i].slice(1).toLowerCase();
      else parts[i] = parts[i].toLowerCase();
    }
    const c = parts.join("-");
    if (!out.includes(c)) out.push(c);
  }
  return out;
}

function options(value) {
  if (value === undefined) return Object.create(null);
  if (value === null) throw new TypeErrorCtor("Intl: options must be an object");
  return Object(value);
}
function getOption(opts, name, allowed, fallback) {
  let v = opts[name];
  if (v === undefined) return fallback;
  if (typeof allowed === "boolean") return Boolean(v);
  v = StringCtor(v);
  if (allowed !== undefined && !allowed.includes(v)) {
    throw new RangeErrorCtor(`Intl: value ${v} out of range for option ${name}`);
  }
  return v;
}
function getNumberOption(opts, name, min, max, fallback) {
  const v = opts[name];
  if (v === undefined) return fallback;
  const n = NumberCtor(v);
  if (n !== n || n < min || n > max) throw new RangeErrorCtor(`Intl: ${name} value is out of range`);
  return MathFloor(n);
}
function brand(self, slot, what) {
  if (self === null || typeof self !== "object" || !slots.has(self) || slots.get(self).kind !== slot) {
    throw new TypeErrorCtor(`${what}: receiver is not an Intl.${slot}`);
  }
  return slots.get(self);
}
const slots = new WeakMap();
function partsToString(parts) {
  let s = "";
  for (const p of parts) s += p.value;
  return s;
}
function defineTag(proto, tag) {
  ObjectDefineProperty(proto, Symbol.toStringTag, { value: tag, configurable: true });
}

// ---- NumberFormat ---------------------------------------------------------------------------------
const CURRENCY = {
  USD: ["$", "US dollars", "US dollar"], EUR: ["€", "euros", "euro"], GBP: ["£", "British pounds", "British pound"],
  JPY: ["¥", "Japanese yen", "Japanese yen"], CNY: ["CN¥", "Chinese yuan", "Chinese yuan"], INR: ["₹", "Indian rupees", "Indian rupee"],
  CAD: ["CA$", "Canadian dollars", "Canadian dollar"], AUD: ["A$", "Australian dollars", "Australian dollar"],
  KRW: ["₩", "South Korean won", "South Korean won"], BRL: ["R$", "Brazilian reals", "Brazilian real"],
  MXN: ["MX$", "Mexican pesos", "Mexican peso"], CHF: ["CHF", "Swiss francs", "Swiss franc"],
  HKD: ["HK$", "Hong Kong dollars", "Hong Kong dollar"], NZD: ["NZ$", "New Zealand dollars", "New Zealand dollar"],
  ILS: ["₪", "Israeli new shekels", "Israeli new shekel"], VND: ["₫", "Vietnamese dong", "Vietnamese dong"],
  TWD: ["NT$", "New Taiwan dollars", "New Taiwan dollar"], PHP: ["₱", "Philippine pesos", "Philippine peso"],
};
const NARROW = { CAD: "$", AUD: "$", MXN: "$", HKD: "$", NZD: "$", TWD: "$", CNY: "¥", BRL: "R$" };
const CURRENCY_DIGITS = { JPY: 0, KRW: 0, VND: 0, CLP: 0, ISK: 0, BHD: 3, KWD: 3, JOD: 3, OMR: 3, TND: 3 };
const UNITS = {
  byte: ["byte", "B", "bytes"], kilobyte: ["kB", "kB", "kilobytes"], megabyte: ["MB", "MB", "megabytes"],
  gigabyte: ["GB", "GB", "gigabytes"], terabyte: ["TB", "TB", "terabytes"], bit: ["bit", "bit", "bits"],
  millisecond: ["ms", "ms", "milliseconds"], second: ["sec", "s", "seconds"], minute: ["min", "m", "minutes"],
  hour: ["hr", "h", "hours"], day: ["day", "d", "days"], week: ["wk", "w", "weeks"], month: ["mth", "m", "months"],
  year: ["yr", "y", "years"], meter: ["m", "m", "meters"], kilometer: ["km", "km", "kilometers"],
  centimeter: ["cm", "cm", "centimeters"], mile: ["mi", "mi", "miles"], foot: ["ft", "′", "feet"], inch: ["in", "″", "inches"],
  kilogram: ["kg", "kg", "kilograms"], gram: ["g", "g", "grams"], pound: ["lb", "lb", "pounds"], percent: ["%", "%", "percent"],
  celsius: ["°C", "°C", "degrees Celsius"], fahrenheit: ["°F", "°", "degrees Fahrenheit"], liter: ["L", "L", "liters"],
  "kilometer-per-hour": ["km/h", "km/h", "kilometers per hour"], "mile-per-hour": ["mph", "mph", "miles per hour"],
};

/** Digits of |x| rounded per the options: { int: "123", frac: "45", exponent } (x finite, ≥ 0). */
function roundDecimal(x, o) {
  if (o.minSig !== undefined) {
    if (x === 0) return { int: "0", frac: "0".repeat(o.minSig - 1) };
    let s = x.toPrecision(o.maxSig);
    if (s.includes("e")) s = expandExponent(s);
    let [int, frac = ""] = s.split(".");
    // At least minSig significant digits stay (trailing zeros beyond them go).
    const keep = int === "0" ? leadingZeros(frac) + o.minSig : MathMax0(o.minSig - int.length);
    frac = trimZeros(frac, keep);
    return { int, frac };
  }
  let s = x.toFixed(o.maxFrac);
  if (s.includes("e")) s = expandExponent(s);
  let [int, frac = ""] = s.split(".");
  frac = trimZeros(frac, o.minFrac);
  if (int.length < o.minInt) int = "0".repeat(o.minInt - int.length) + int;
  return { int, frac };
}
function MathMax0(n) {
  return n > 0 ? n : 0;
}
function leadingZeros(s) {
  let i = 0;
  while (i < s.length && s[i] === "0") i++;
  return i;
}
function trimZeros(frac, keep) {
  let end = frac.length;
  while (end > keep && frac[end - 1] === "0") end--;
  return frac.slice(0, end);
}
function expandExponent(s) {
  const [mant, expS] = s.split("e");
  const exp = NumberCtor(expS);
  let [int, frac = ""] = mant.split(".");
  if (exp >= 0) {
    const digits = int + frac;
    const point = int.length + exp;
    return digits.length <= point ? digits + "0".repeat(point - digits.length) : digits.slice(0, point) + "." + digits.slice(point);
  }
  return "0." + "0".repeat(-exp - 1) + int + frac;
}
function group(int, grouping) {
  if (grouping === false || (grouping === "min2" && int.length < 5)) return [int];
  const out = [];
  let end = int.length;
  while (end > 3) {
    out.unshift(int.slice(end - 3, end));
    end -= 3;
  }
  out.unshift(int.slice(0, end));
  return out;
}
const COMPACT_SHORT = ["", "K", "M", "B", "T"];
const COMPACT_LONG = ["", " thousand", " million", " billion", " trillion"];

function NumberFormat(locales, opts) {
  if (!new.target) return new NumberFormat(locales, opts);
  canonicalLocales(locales);
  const o = options(opts);
  const s = { kind: "NumberFormat" };
  s.style = getOption(o, "style", ["decimal", "percent", "currency", "unit"], "decimal");
  const currency = o.currency;
  if (currency !== undefined) {
    s.currency = StringCtor(currency).toUpperCase();
    if (!/^[A-Z]{3}$/.test(s.currency)) throw new RangeErrorCtor(`Intl.NumberFormat: invalid currency code: ${currency}`);
  }
  s.currencyDisplay = getOption(o, "currencyDisplay", ["symbol", "narrowSymbol", "code", "name"], "symbol");
  s.currencySign = getOption(o, "currencySign", ["standard", "accounting"], "standard");
  if (s.style === "currency" && s.currency === undefined) throw new TypeErrorCtor("Intl.NumberFormat: currency is required with currency style");
  if (o.unit !== undefined) s.unit = StringCtor(o.unit);
  s.unitDisplay = getOption(o, "unitDisplay", ["short", "narrow", "long"], "short");
  if (s.style === "unit") {
    if (s.unit === undefined) throw new TypeErrorCtor("Intl.NumberFormat: unit is required with unit style");
    if (!(s.unit in UNITS)) throw new RangeErrorCtor(`Intl.NumberFormat: unsupported unit ${s.unit}`);
  }
  s.notation = getOption(o, "notation", ["standard", "scientific", "engineering", "compact"], "standard");
  s.compactDisplay = getOption(o, "compactDisplay", ["short", "long"], "short");
  s.signDisplay = getOption(o, "signDisplay", ["auto", "never", "always", "exceptZero", "negative"], "auto");
  const ug = o.useGrouping;
  s.useGrouping = ug === undefined ? (s.notation === "compact" ? "min2" : "auto") : ug === false || ug === "false" ? false : ug === "min2" ? "min2" : ug === "always" || ug === true ? "always" : "auto";
  s.minInt = getNumberOption(o, "minimumIntegerDigits", 1, 21, 1);
  const cDigits = s.style === "currency" ? (CURRENCY_DIGITS[s.currency] ?? 2) : 0;
  const defMin = s.style === "currency" ? cDigits : 0;
  const defMax = s.style === "currency" ? cDigits : s.style === "percent" ? 0 : s.notation === "compact" ? 0 : 3;
  if (o.minimumSignificantDigits !== undefined || o.maximumSignificantDigits !== undefined) {
    s.minSig = getNumberOption(o, "minimumSignificantDigits", 1, 21, 1);
    s.maxSig = getNumberOption(o, "maximumSignificantDigits", s.minSig, 21, 21);
  } else if (s.notation === "compact" && o.minimumFractionDigits === undefined && o.maximumFractionDigits === undefined) {
    s.compactSig = true;
  }
  s.minFrac = getNumberOption(o, "minimumFractionDigits", 0, 100, undefined);
  s.maxFrac = getNumberOption(o, "maximumFractionDigits", 0, 100, undefined);
  if (s.minFrac === undefined) s.minFrac = s.maxFrac === undefined ? defMin : Math.min(defMin, s.maxFrac);
  if (s.maxFrac === undefined) s.maxFrac = Math.max(s.minFrac, defMax);
  else if (s.maxFrac < s.minFrac) throw new RangeErrorCtor("Intl.NumberFormat: maximumFractionDigits is less than minimumFractionDigits");
  slots.set(this, s);
}

function numberParts(s, value) {
  let x;
  let negative;
  if (typeof value === "bigint") {
    negative = value < 0n;
    const digits = (negative ? -value : value).toString();
    x = NumberCtor(digits);
    if (s.style !== "percent" && s.notation === "standard" && s.minSig === undefined) {
      return decorate(s, negative, false, [...integerParts(digits.length < s.minInt ? "0".repeat(s.minInt - digits.length) + digits : digits, s), ...fractionParts("0".repeat(s.minFrac))], "");
    }
  } else {
    x = NumberCtor(value);
    negative = x < 0 || Object.is(x, -0);
    x = MathAbs(x);
  }
  if (x !== x) return decorate(s, false, false, [{ type: "nan", value: "NaN" }], "");
  if (x === Infinity) return decorate(s, negative, false, [{ type: "infinity", value: "∞" }], "");
  if (s.style === "percent") x *= 100;
  let exponent = 0;
  let suffix = "";
  if (s.notation === "scientific" || s.notation === "engineering") {
    if (x !== 0) {
      exponent = MathFloor(MathLog10(x));
      if (s.notation === "engineering") exponent = MathFloor(exponent / 3) * 3;
      x = x / MathPow(10, exponent);
      if (x >= (s.notation === "engineering" ? 1000 : 10)) {
        x /= 10;
        exponent += 1;
      }
    }
  } else if (s.notation === "compact") {
    let k = 0;
    while (k < 4 && MathRound(x) >= 1000) {
      x /= 1000;
      k++;
    }
    suffix = (s.compactDisplay === "long" ? COMPACT_LONG : COMPACT_SHORT)[k];
  }
  let digits;
  if (s.compactSig) {
    digits = x < 100 ? roundDecimal(x, { minInt: 1, minFrac: 0, maxFrac: 0, minSig: 1, maxSig: 2 }) : roundDecimal(x, { minInt: 1, minFrac: 0, maxFrac: 0 });
  } else {
    digits = roundDecimal(x, s.minSig !== undefined ? s : { minInt: s.minInt, minFrac: s.notation === "standard" || s.notation === "compact" ? s.minFrac : s.minFrac, maxFrac: s.notation === "standard" || s.notation === "compact" ? s.maxFrac : Math.max(s.maxFrac, 3) });
  }
  const zero = /^0*$/.test(digits.int) && /^0*$/.test(digits.frac);
  const parts = [...integerParts(digits.int, s), ...fractionParts(digits.frac)];
  if (s.notation === "scientific" || s.notation === "engineering") {
    parts.push({ type: "exponentSeparator", value: "E" });
    if (exponent < 0) parts.push({ type: "exponentMinusSign", value: "-" });
    parts.push({ type: "exponentInteger", value: StringCtor(MathAbs(exponent)) });
  }
  if (suffix !== "") {
    if (suffix[0] === " ") parts.push({ type: "literal", value: " " });
    parts.push({ type: "compact", value: suffix.trim() });
  }
  return decorate(s, negative, zero, parts);
}
function integerParts(int, s) {
  const groups = group(int, s.useGrouping);
  const parts = [];
  for (let i = 0; i < groups.length; i++) {
    if (i > 0) parts.push({ type: "group", value: "," });
    parts.push({ type: "integer", value: groups[i] });
  }
  return parts;
}
function fractionParts(frac) {
  return frac === "" ? [] : [{ type: "decimal", value: "." }, { type: "fraction", value: frac }];
}
function decorate(s, negative, zero, parts) {
  let sign = "";
  switch (s.signDisplay) {
    case "auto": sign = negative ? "-" : ""; break;
    case "always": sign = negative ? "-" : "+"; break;
    case "never": sign = ""; break;
    case "exceptZero": sign = zero ? "" : negative ? "-" : "+"; break;
    case "negative": sign = negative && !zero ? "-" : ""; break;
  }
  const accounting = s.style === "currency" && s.currencySign === "accounting" && sign === "-";
  const out = [];
  if (accounting) out.push({ type: "literal", value: "(" });
  else if (sign !== "") out.push({ type: sign === "-" ? "minusSign" : "plusSign", value: sign });
  if (s.style === "currency") {
    const info = CURRENCY[s.currency];
    if (s.currencyDisplay === "code") {
      out.push({ type: "currency", value: s.currency }, { type: "literal", value: "\u00a0" }, ...parts);
    } else if (s.currencyDisplay === "name") {
      const one = parts.length === 1 && parts[0].value === "1";
      out.push(...parts, { type: "literal", value: " " }, { type: "currency", value: info ? info[one ? 2 : 1] : s.currency });
    } else {
      const symbol = info ? (s.currencyDisplay === "narrowSymbol" ? (NARROW[s.currency] ?? info[0]) : info[0]) : s.currency;
      out.push({ type: "currency", value: symbol });
      if (/^[A-Z]+$/.test(symbol)) out.push({ type: "literal", value: "\u00a0" });
      out.push(...parts);
    }
  } else {
    out.push(...parts);
  }
  if (s.style === "percent") out.push({ type: "percentSign", value: "%" });
  if (s.style === "unit") {
    const [short, narrow, long] = UNITS[s.unit];
    if (s.unitDisplay === "long") {
      const one = parts.length === 1 && parts[0].value === "1";
      out.push({ type: "literal", value: " " }, { type: "unit", value: one ? long.replace(/s$/, "").replace(/^feet$/, "foot").replace(/^inche$/, "inch") : long });
    } else if (s.unitDisplay === "narrow") {
      if (!/^[%°′″]/.test(narrow)) out.push({ type: "literal", value: narrow.length > 1 || /[a-z]/.test(narrow) ? "" : "" });
      out.push({ type: "unit", value: narrow });
    } else {
      if (short !== "%") out.push({ type: "literal", value: " " });
      out.push({ type: "unit", value: short });
    }
  }
  if (accounting) out.push({ type: "literal", value: ")" });
  return out;
}
function toNumeric(value) {
  return typeof value === "bigint" ? value : NumberCtor(value);
}
NumberFormat.prototype = {
  constructor: NumberFormat,
  get format() {
    const s = brand(this, "NumberFormat", "Intl.NumberFormat.prototype.format");
    if (s.bound === undefined) s.bound = (value) => partsToString(numberParts(s, toNumeric(value)));
    return s.bound;
  },
  formatToParts(value) {
    return numberParts(brand(this, "NumberFormat", "Intl.NumberFormat.prototype.formatToParts"), toNumeric(value));
  },
  formatRange(start, end) {
    const s = brand(this, "NumberFormat", "Intl.NumberFormat.prototype.formatRange");
    return `${partsToString(numberParts(s, toNumeric(start)))}–${partsToString(numberParts(s, toNumeric(end)))}`;
  },
  resolvedOptions() {
    const s = brand(this, "NumberFormat", "Intl.NumberFormat.prototype.resolvedOptions");
    const r = { locale: LOCALE, numberingSystem: "latn", style: s.style };
    if (s.style === "currency") Object.assign(r, { currency: s.currency, currencyDisplay: s.currencyDisplay, currencySign: s.currencySign });
    if (s.style === "unit") Object.assign(r, { unit: s.unit, unitDisplay: s.unitDisplay });
    r.minimumIntegerDigits = s.minInt;
    if (s.minSig !== undefined) Object.assign(r, { minimumSignificantDigits: s.minSig, maximumSignificantDigits: s.maxSig });
    else Object.assign(r, { minimumFractionDigits: s.minFrac, maximumFractionDigits: s.maxFrac });
    Object.assign(r, { useGrouping: s.useGrouping, notation: s.notation, signDisplay: s.signDisplay, roundingMode: "halfExpand" });
    if (s.notation === "compact") r.compactDisplay = s.compactDisplay;
    return r;
  },
};
defineTag(NumberFormat.prototype, "Intl.NumberFormat");

// ---- DateTimeFormat ---------------------------------------------------------------------------
const MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
const DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
const UTC_NAMES = ["UTC", "ETC/UTC", "ETC/GMT", "GMT", "ETC/UCT", "UCT", "ETC/ZULU", "ZULU", "ETC/UNIVERSAL", "UNIVERSAL", "ETC/GREENWICH", "GREENWICH", "ETC/GMT0", "GMT0", "ETC/GMT+0", "ETC/GMT-0"];
const COMPONENTS = ["weekday", "era", "year", "month", "day", "dayPeriod", "hour", "minute", "second", "fractionalSecondDigits", "timeZoneName"];

function DateTimeFormat(locales, opts) {
  if (!new.target) return new DateTimeFormat(locales, opts);
  canonicalLocales(locales);
  const o = options(opts);
  const s = { kind: "DateTimeFormat" };
  const tz = o.timeZone;
  if (tz !== undefined && !UTC_NAMES.includes(StringCtor(tz).toUpperCase())) {
    throw new RangeErrorCtor(`Intl.DateTimeFormat: time zone ${StringCtor(tz)} is not available on isogate (only UTC)`);
  }
  s.hour12 = o.hour12 === undefined ? undefined : Boolean(o.hour12);
  s.hourCycle = getOption(o, "hourCycle", ["h11", "h12", "h23", "h24"], undefined);
  s.weekday = getOption(o, "weekday", ["narrow", "short", "long"], undefined);
  s.era = getOption(o, "era", ["narrow", "short", "long"], undefined);
  s.year = getOption(o, "year", ["2-digit", "numeric"], undefined);
  s.month = getOption(o, "month", ["2-digit", "numeric", "narrow", "short", "long"], undefined);
  s.day = getOption(o, "day", ["2-digit", "numeric"], undefined);
  s.dayPeriod = getOption(o, "dayPeriod", ["narrow", "short", "long"], undefined);
  s.hour = getOption(o, "hour", ["2-digit", "numeric"], undefined);
  s.minute = getOption(o, "minute", ["2-digit", "numeric"], undefined);
  s.second = getOption(o, "second", ["2-digit", "numeric"], undefined);
  s.fractionalSecondDigits = getNumberOption(o, "fractionalSecondDigits", 1, 3, undefined);
  s.timeZoneName = getOption(o, "timeZoneName", ["short", "long", "shortOffset", "longOffset", "shortGeneric", "longGeneric"], undefined);
  s.dateStyle = getOption(o, "dateStyle", ["full", "long", "medium", "short"], undefined);
  s.timeStyle = getOption(o, "timeStyle", ["full", "long", "medium", "short"], undefined);
  const explicit = COMPONENTS.some((k) => s[k] !== undefined);
  if ((s.dateStyle || s.timeStyle) && explicit) {
    throw new TypeErrorCtor("Intl.DateTimeFormat: dateStyle and timeStyle cannot be combined with other date/time options");
  }
  s.defaults = getOption(o, "__defaults", undefined, "date");
  if (!explicit && !s.dateStyle && !s.timeStyle) {
    if (s.defaults === "date" || s.defaults === "all") s.year = s.month = s.day = "numeric";
    if (s.defaults === "time" || s.defaults === "all") s.hour = s.minute = s.second = "numeric";
  }
  s.h12 = s.hourCycle !== undefined && s.hour12 === undefined ? s.hourCycle === "h11" || s.hourCycle === "h12" : s.hour12 !== false;
  slots.set(this, s);
}

function pad2(n) {
  return n < 10 ? `0${n}` : StringCtor(n);
}
function dateValue(date) {
  const t = date === undefined ? DateCtor.now() : date instanceof DateCtor ? ReflectApplyGetTime(date) : NumberCtor(date);
  if (!Number.isFinite(t) || MathAbs(t) > 8.64e15) throw new RangeErrorCtor("Invalid time value");
  return new DateCtor(t);
}
function ReflectApplyGetTime(date) {
  return Reflect.apply(DateGetTime, date, []);
}
function timeParts(s, d, style) {
  const parts = [];
  const hour = d.getUTCHours();
  const h12 = s.h12;
  const showSecond = style ? style !== "short" : s.second !== undefined;
  const showMinute = style ? true : s.minute !== undefined;
  const showHour = style ? true : s.hour !== undefined;
  if (showHour) {
    let h = hour;
    if (h12) h = h % 12 === 0 ? 12 : h % 12;
    parts.push({ type: "hour", value: (s.hour === "2-digit" || (!h12 && showMinute)) ? pad2(h) : StringCtor(h) });
  }
  if (showMinute) {
    if (parts.length) parts.push({ type: "literal", value: ":" });
    parts.push({ type: "minute", value: showHour || s.minute === "2-digit" ? pad2(d.getUTCMinutes()) : StringCtor(d.getUTCMinutes()) });
  }
  if (showSecond) {
    if (parts.length) parts.push({ type: "literal", value: ":" });
    parts.push({ type: "second", value: showMinute || s.second === "2-digit" ? pad2(d.getUTCSeconds()) : StringCtor(d.getUTCSeconds()) });
  }
  if (!style && s.fractionalSecondDigits !== undefined) {
    parts.push({ type: "literal", value: "." });
    parts.push({ type: "fractionalSecond", value: StringCtor(d.getUTCMilliseconds()).padStart(3, "0").slice(0, s.fractionalSecondDigits) });
  }
  if (showHour && h12) {
    parts.push({ type: "literal", value: " " }, { type: "dayPeriod", value: hour < 12 ? "AM" : "PM" });
  }
  const zone = style === "full" ? "long" : style === "long" ? "short" : style ? undefined : s.timeZoneName;
  if (zone !== undefined) {
    const name = zone === "long" || zone === "longGeneric" ? "Coordinated Universal Time" : zone.endsWith("Offset") ? "GMT" : "UTC";
    parts.push({ type: "literal", value: " " }, { type: "timeZoneName", value: name });
  }
  return parts;
}
function dateParts(s, d, style) {
  const y = d.getUTCFullYear();
  const m = d.getUTCMonth();
  const day = d.getUTCDate();
  const wd = d.getUTCDay();
  const year = style === "short" ? "2-digit" : style ? "numeric" : s.year;
  const month = style === "short" ? "numeric" : style === "medium" ? "short" : style ? "long" : s.month;
  const dayOpt = style ? "numeric" : s.day;
  const weekday = style === "full" ? "long" : style ? undefined : s.weekday;
  const yearText = year === "2-digit" ? pad2(((y % 100) + 100) % 100) : y <= 0 ? StringCtor(1 - y) : StringCtor(y);
  const parts = [];
  const wdText = weekday === "long" ? DAYS[wd] : weekday === "short" ? DAYS[wd].slice(0, 3) : weekday === "narrow" ? DAYS[wd][0] : undefined;
  if (month === "long" || month === "short" || month === "narrow") {
    const mText = month === "long" ? MONTHS[m] : month === "short" ? MONTHS[m].slice(0, 3) : MONTHS[m][0];
    if (wdText !== undefined) parts.push({ type: "weekday", value: wdText }, { type: "literal", value: ", " });
    parts.push({ type: "month", value: mText });
    if (dayOpt !== undefined) parts.push({ type: "literal", value: " " }, { type: "day", value: dayOpt === "2-digit" ? pad2(day) : StringCtor(day) });
    if (year !== undefined) parts.push({ type: "literal", value: dayOpt !== undefined ? ", " : " " }, { type: "year", value: yearText });
  } else {
    if (wdText !== undefined) parts.push({ type: "weekday", value: wdText });
    const nums = [];
    if (month !== undefined) nums.push({ type: "month", value: month === "2-digit" ? pad2(m + 1) : StringCtor(m + 1) });
    if (dayOpt !== undefined) nums.push({ type: "day", value: dayOpt === "2-digit" ? pad2(day) : StringCtor(day) });
    if (year !== undefined) nums.push({ type: "year", value: yearText });
    if (wdText !== undefined && nums.length) parts.push({ type: "literal", value: ", " });
    for (let i = 0; i < nums.length; i++) {
      if (i > 0) parts.push({ type: "literal", value: "/" });
      parts.push(nums[i]);
    }
  }
  if (!style && s.era !== undefined) parts.push({ type: "literal", value: " " }, { type: "era", value: y > 0 ? (s.era === "long" ? "Anno Domini" : s.era === "narrow" ? "A" : "AD") : s.era === "long" ? "Before Christ" : s.era === "narrow" ? "B" : "BC" });
  return parts;
}
function dateTimeParts(s, date) {
  const d = dateValue(date);
  if (s.dateStyle || s.timeStyle) {
    const date = s.dateStyle ? dateParts(s, d, s.dateStyle) : [];
    const time = s.timeStyle ? timeParts(s, d, s.timeStyle) : [];
    if (date.length && time.length) {
      const sep = s.dateStyle === "full" || s.dateStyle === "long" ? " at " : ", ";
      return [...date, { type: "literal", value: sep }, ...time];
    }
    return date.length ? date : time;
  }
  const date1 = s.year !== undefined || s.month !== undefined || s.day !== undefined || s.weekday !== undefined ? dateParts(s, d, undefined) : [];
  const time = s.hour !== undefined || s.minute !== undefined || s.second !== undefined || s.fractionalSecondDigits !== undefined || (s.timeZoneName !== undefined && !date1.length) ? timeParts(s, d, undefined) : [];
  if (date1.length && time.length) return [...date1, { type: "literal", value: ", " }, ...time];
  if (date1.length && s.timeZoneName !== undefined) return [...date1, { type: "literal", value: ", " }, { type: "timeZoneName", value: s.timeZoneName.startsWith("long") ? "Coordinated Universal Time" : "UTC" }];
  return date1.length ? date1 : time;
}
DateTimeFormat.prototype = {
  constructor: DateTimeFormat,
  get format() {
    const s = brand(this, "DateTimeFormat", "Intl.DateTimeFormat.prototype.format");
    if (s.bound === undefined) s.bound = (date) => partsToString(dateTimeParts(s, date));
    return s.bound;
  },
  formatToParts(date) {
    return dateTimeParts(brand(this, "DateTimeFormat", "Intl.DateTimeFormat.prototype.formatToParts"), date);
  },
  formatRange(start, end) {
    const s = brand(this, "DateTimeFormat", "Intl.DateTimeFormat.prototype.formatRange");
    const a = partsToString(dateTimeParts(s, start));
    const b = partsToString(dateTimeParts(s, end));
    return a === b ? a : `${a} – ${b}`;
  },
  resolvedOptions() {
    const s = brand(this, "DateTimeFormat", "Intl.DateTimeFormat.prototype.resolvedOptions");
    const r = { locale: LOCALE, calendar: "gregory", numberingSystem: "latn", timeZone: "UTC" };
    if (s.hour !== undefined || s.timeStyle) Object.assign(r, { hourCycle: s.h12 ? "h12" : "h23", hour12: s.h12 });
    for (const k of COMPONENTS) if (s[k] !== undefined) r[k] = s[k];
    if (s.dateStyle) r.dateStyle = s.dateStyle;
    if (s.timeStyle) r.timeStyle = s.timeStyle;
    return r;
  },
};
defineTag(DateTimeFormat.prototype, "Intl.DateTimeFormat");

// ---- PluralRules, RelativeTimeFormat, ListFormat, Collator -------------------------------------
function PluralRules(locales, opts) {
  if (!new.target) throw new TypeErrorCtor("Intl.PluralRules must be called with new");
  canonicalLocales(locales);
  const o = options(opts);
  slots.set(this, { kind: "PluralRules", type: getOption(o, "type", ["cardinal", "ordinal"], "cardinal"), minFrac: getNumberOption(o, "minimumFractionDigits", 0, 100, 0) });
}
function pluralOf(s, n) {
  n = NumberCtor(n);
  if (s.type === "ordinal") {
    const i = MathAbs(MathTrunc(n));
    const d10 = i % 10;
    const d100 = i % 100;
    if (d10 === 1 && d100 !== 11) return "one";
    if (d10 === 2 && d100 !== 12) return "two";
    if (d10 === 3 && d100 !== 13) return "few";
    return "other";
  }
  return MathAbs(n) === 1 && s.minFrac === 0 ? "one" : "other";
}
PluralRules.prototype = {
  constructor: PluralRules,
  select(n) {
    return pluralOf(brand(this, "PluralRules", "Intl.PluralRules.prototype.select"), n);
  },
  resolvedOptions() {
    const s = brand(this, "PluralRules", "Intl.PluralRules.prototype.resolvedOptions");
    return { locale: LOCALE, type: s.type, minimumIntegerDigits: 1, minimumFractionDigits: s.minFrac, maximumFractionDigits: Math.max(s.minFrac, 3), pluralCategories: s.type === "ordinal" ? ["few", "one", "two", "other"] : ["one", "other"] };
  },
};
defineTag(PluralRules.prototype, "Intl.PluralRules");

const RELATIVE_UNITS = ["second", "minute", "hour", "day", "week", "month", "quarter", "year"];
const RELATIVE_AUTO = {
  day: { "-1": "yesterday", 0: "today", 1: "tomorrow" },
  year: { "-1": "last year", 0: "this year", 1: "next year" },
  month: { "-1": "last month", 0: "this month", 1: "next month" },
  week: { "-1": "last week", 0: "this week", 1: "next week" },
  quarter: { "-1": "last quarter", 0: "this quarter", 1: "next quarter" },
  hour: { 0: "this hour" },
  minute: { 0: "this minute" },
  second: { 0: "now" },
};
const RELATIVE_SHORT = { second: "sec.", minute: "min.", hour: "hr.", day: "day", week: "wk.", month: "mo.", quarter: "qtr.", year: "yr." };
function RelativeTimeFormat(locales, opts) {
  if (!new.target) throw new TypeErrorCtor("Intl.RelativeTimeFormat must be called with new");
  canonicalLocales(locales);
  const o = options(opts);
  slots.set(this, { kind: "RelativeTimeFormat", style: getOption(o, "style", ["long", "short", "narrow"], "long"), numeric: getOption(o, "numeric", ["always", "auto"], "always") });
}
function relative(s, value, unit) {
  const v = NumberCtor(value);
  if (!Number.isFinite(v)) throw new RangeErrorCtor("Intl.RelativeTimeFormat: value must be finite");
  let u = StringCtor(unit);
  if (u.endsWith("s")) u = u.slice(0, -1);
  if (!RELATIVE_UNITS.includes(u)) throw new RangeErrorCtor(`Intl.RelativeTimeFormat: invalid unit ${unit}`);
  if (s.numeric === "auto") {
    const word = RELATIVE_AUTO[u] && RELATIVE_AUTO[u][Object.is(v, -0) ? 0 : v];
    if (word !== undefined) return word;
  }
  const n = new NumberFormat(LOCALE, { maximumFractionDigits: 3 }).format(MathAbs(v));
  const name = s.style === "long" ? (MathAbs(v) === 1 ? u : `${u}s`) : (RELATIVE_SHORT[u] === "day" && MathAbs(v) !== 1 ? "days" : RELATIVE_SHORT[u]);
  return v < 0 || Object.is(v, -0) ? `${n} ${name} ago` : `in ${n} ${name}`;
}
RelativeTimeFormat.prototype = {
  constructor: RelativeTimeFormat,
  format(value, unit) {
    return relative(brand(this, "RelativeTimeFormat", "Intl.RelativeTimeFormat.prototype.format"), value, unit);
  },
  formatToParts(value, unit) {
    return [{ type: "literal", value: relative(brand(this, "RelativeTimeFormat", "Intl.RelativeTimeFormat.prototype.formatToParts"), value, unit) }];
  },
  resolvedOptions() {
    const s = brand(this, "RelativeTimeFormat", "Intl.RelativeTimeFormat.prototype.resolvedOptions");
    return { locale: LOCALE, style: s.style, numeric: s.numeric, numberingSystem: "latn" };
  },
};
defineTag(RelativeTimeFormat.prototype, "Intl.RelativeTimeFormat");

function ListFormat(locales, opts) {
  if (!new.target) throw new TypeErrorCtor("Intl.ListFormat must be called with new");
  canonicalLocales(locales);
  const o = options(opts);
  slots.set(this, { kind: "ListFormat", type: getOption(o, "type", ["conjunction", "disjunction", "unit"], "conjunction"), style: getOption(o, "style", ["long", "short", "narrow"], "long") });
}
function listParts(s, list) {
  const items = [];
  for (const x of list) {
    if (typeof x !== "string") throw new TypeErrorCtor("Intl.ListFormat: list items must be strings");
    items.push(x);
  }
  const word = s.type === "conjunction" ? (s.style === "long" ? "and" : s.style === "short" ? "&" : "") : s.type === "disjunction" ? "or" : "";
  const parts = [];
  for (let i = 0; i < items.length; i++) {
    if (i > 0) {
      let sep;
      if (s.type === "unit") sep = s.style === "narrow" ? " " : ", ";
      else if (i === items.length - 1) sep = word === "" ? ", " : items.length === 2 ? ` ${word} ` : `, ${word} `;
      else sep = ", ";
      parts.push({ type: "literal", value: sep });
    }
    parts.push({ type: "element", value: items[i] });
  }
  return parts;
}
ListFormat.prototype = {
  constructor: ListFormat,
  format(list) {
    return partsToString(listParts(brand(this, "ListFormat", "Intl.ListFormat.prototype.format"), list));
  },
  formatToParts(list) {
    return listParts(brand(this, "ListFormat", "Intl.ListFormat.prototype.formatToParts"), list);
  },
  resolvedOptions() {
    const s = brand(this, "ListFormat", "Intl.ListFormat.prototype.resolvedOptions");
    return { locale: LOCALE, type: s.type, style: s.style };
  },
};
defineTag(ListFormat.prototype, "Intl.ListFormat");

function Collator(locales, opts) {
  if (!new.target) return new Collator(locales, opts);
  canonicalLocales(locales);
  const o = options(opts);
  slots.set(this, {
    kind: "Collator",
    usage: getOption(o, "usage", ["sort", "search"], "sort"),
    sensitivity: getOption(o, "sensitivity", ["base", "accent", "case", "variant"], "variant"),
    numeric: getOption(o, "numeric", true, false),
    ignorePunctuation: getOption(o, "ignorePunctuation", true, false),
    caseFirst: getOption(o, "caseFirst", ["upper", "lower", "false"], "false"),
  });
}
// Tiered like a collation: base letters first, then accents, then case (lower before upper
// unless caseFirst: "upper"); `sensitivity` says which tiers count. Code-point order within a
// tier (no locale tailoring).
function cmp(a, b) {
  return a < b ? -1 : a > b ? 1 : 0;
}
function tiers(s, x) {
  let k = StringCtor(x);
  if (s.ignorePunctuation) k = k.replace(/[\p{P}\s]/gu, "");
  const lower = k.toLowerCase();
  return { base: lower.normalize("NFD").replace(/\p{M}/gu, ""), accent: lower.normalize("NFD"), raw: k };
}
function compareText(s, x, y) {
  const a = tiers(s, x);
  const b = tiers(s, y);
  let c = cmp(a.base, b.base);
  if (c !== 0) return c;
  if (s.sensitivity === "accent" || s.sensitivity === "variant") {
    c = cmp(a.accent, b.accent);
    if (c !== 0) return c;
  }
  if (s.sensitivity === "case" || s.sensitivity === "variant") {
    // Lower case sorts first: invert the code-point order of the raw strings.
    c = cmp(b.raw, a.raw);
    if (s.caseFirst === "upper") c = -c;
  }
  return c;
}
function compareStrings(s, a, b) {
  const x = StringCtor(a);
  const y = StringCtor(b);
  if (s.numeric) {
    const re = /(\d+)|(\D+)/g;
    const xs = x.match(re) || [];
    const ys = y.match(re) || [];
    for (let i = 0; i < Math.min(xs.length, ys.length); i++) {
      const p = xs[i];
      const q = ys[i];
      const c = /^\d/.test(p) && /^\d/.test(q) ? cmp(NumberCtor(p), NumberCtor(q)) : compareText(s, p, q);
      if (c !== 0) return c;
    }
    return cmp(xs.length, ys.length);
  }
  return compareText(s, x, y);
}
Collator.prototype = {
  constructor: Collator,
  get compare() {
    const s = brand(this, "Collator", "Intl.Collator.prototype.compare");
    if (s.bound === undefined) s.bound = (a, b) => compareStrings(s, a, b);
    return s.bound;
  },
  resolvedOptions() {
    const s = brand(this, "Collator", "Intl.Collator.prototype.resolvedOptions");
    return { locale: LOCALE, usage: s.usage, sensitivity: s.sensitivity, ignorePunctuation: s.ignorePunctuation, collation: "default", numeric: s.numeric, caseFirst: s.caseFirst };
  },
};
defineTag(Collator.prototype, "Intl.Collator");

for (const ctor of [NumberFormat, DateTimeFormat, PluralRules, RelativeTimeFormat, ListFormat, Collator]) {
  ObjectDefineProperty(ctor.prototype, "constructor", { value: ctor, writable: true, configurable: true, enumerable: false });
  ObjectDefineProperty(ctor, "supportedLocalesOf", {
    value: function supportedLocalesOf(locales) {
      return canonicalLocales(locales).filter((l) => l === "en" || l.startsWith("en-"));
    },
    writable: true,
    configurable: true,
  });
}

const Intl = {
  NumberFormat,
  DateTimeFormat,
  PluralRules,
  RelativeTimeFormat,
  ListFormat,
  Collator,
  getCanonicalLocales: canonicalLocales,
  supportedValuesOf(key) {
    switch (StringCtor(key)) {
      case "currency": return Object.keys(CURRENCY).sort();
      case "timeZone": return ["UTC"];
      case "unit": return Object.keys(UNITS).sort();
      case "calendar": return ["gregory"];
      case "numberingSystem": return ["latn"];
      case "collation": return ["default"];
      default: throw new RangeErrorCtor(`Intl.supportedValuesOf: invalid key ${key}`);
    }
  },
};
for (const key of Object.keys(Intl)) {
  ObjectDefineProperty(Intl, key, { enumerable: false });
}
defineTag(Intl, "Intl");

/** The toLocale*String methods (Number, BigInt, Date) over Intl. */
const locale = {
  number(value, locales, opts) {
    return new NumberFormat(locales, opts).format(value);
  },
  date(date, locales, opts, defaults) {
    const t = Reflect.apply(DateGetTime, date, []);
    if (t !== t) return "Invalid Date";
    const o = opts === undefined ? {} : Object.assign({}, options(opts));
    o.__defaults = defaults;
    return new DateTimeFormat(locales, o).format(t);
  },
};

export default ObjectFreeze({ Intl, locale });
