// The `power.*` node settings: checked when set (one clear line when wrong), secrets marked so
// that the API, CLI, dashboard and events show `***` instead of them.
import { UserError } from "../errors.ts";
import { secretShown, type Setting, type SettingValidator } from "../nodes.ts";
import { checkCommandLine } from "./command.ts";
import { hasControlChars, parseHostPort } from "./driver.ts";

function choice(allowed: () => string[], fold: (s: string) => string): SettingValidator {
  return (key, value) => {
    const v = allowed().find((a) => fold(a) === fold(value.trim()));
    if (!v) throw new UserError(`${key} must be one of ${allowed().join(", ")}, got "${value}"`);
    return v;
  };
}

/** One line of printable text, `max` characters at most; `min` for SNMP keys (8 by RFC 3414).
 *  `spaces` false: values written into snmp.conf, where a blank would end the word. */
function text(opts: { max: number; min?: number; spaces?: boolean }): SettingValidator {
  return (key, value) => {
    if (hasControlChars(value)) throw new UserError(`${key} must be a single line`);
    if (!opts.spaces && /\s/.test(value)) throw new UserError(`${key} must not contain blanks`);
    if (value.length > opts.max) {
      throw new UserError(`${key} is longer than ${opts.max} characters`);
    }
    if (value.length < (opts.min ?? 1)) {
      throw new UserError(`${key} needs at least ${opts.min ?? 1} characters`);
    }
    return value;
  };
}

/** A secret: stored as given, shown as `***`; `***` itself is refused (it is what a client that
 *  echoes back a listing would send). */
function secret(check: SettingValidator): SettingValidator {
  return (key, value) => {
    if (value === secretShown) {
      throw new UserError(`${key}: "${secretShown}" is how a set secret is shown, not a value`);
    }
    return check(key, value);
  };
}

function wholeNumber(min: number, max: number, what: string): SettingValidator {
  return (key, value) => {
    const v = value.trim();
    if (!/^\d{1,6}$/.test(v) || Number(v) < min || Number(v) > max) {
      throw new UserError(`${key} must be ${what} between ${min} and ${max}, got "${value}"`);
    }
    return String(Number(v));
  };
}

const upper = (s: string) => s.toUpperCase();

/** The power.* settings; `power.driver` takes the names `driverNames` gives (the server's). */
export function powerSettings(driverNames: () => string[]): Setting[] {
  return [
    { key: "power.driver", check: choice(driverNames, (s) => s.toLowerCase()) },
    {
      key: "power.host",
      check: (_key, value) => {
        parseHostPort(value.trim(), 1); // argv-safe: a host never starts with "-"
        return value.trim();
      },
      sendsSecrets: true,
    },
    {
      key: "power.user",
      check: (key, value) => {
        const v = text({ max: 64 })(key, value);
        if (v.startsWith("-")) throw new UserError(`${key} must not start with "-"`);
        return v;
      },
    },
    { key: "power.password", check: secret(text({ max: 128, spaces: true })), secret: true },
    { key: "power.cipher", check: wholeNumber(0, 17, "an IPMI cipher suite") },
    { key: "power.timeout", check: wholeNumber(1, 300, "a number of seconds") },
    { key: "power.community", check: secret(text({ max: 64 })), secret: true },
    {
      key: "power.auth.protocol",
      check: choice(() => ["MD5", "SHA", "SHA-224", "SHA-256", "SHA-384", "SHA-512"], upper),
    },
    { key: "power.auth.key", check: secret(text({ max: 128, min: 8 })), secret: true },
    {
      key: "power.priv.protocol",
      check: choice(() => ["DES", "AES", "AES-192", "AES-256"], upper),
    },
    { key: "power.priv.key", check: secret(text({ max: 128, min: 8 })), secret: true },
    {
      key: "power.poe.port",
      check: (key, value) => {
        const m = /^(?:(\d{1,5})\.)?(\d{1,5})$/.exec(value.trim());
        if (!m || Number(m[2]) === 0 || m[1] === "0") {
          throw new UserError(`${key} must be a PoE port index like 4, or GROUP.PORT like 1.4`);
        }
        return `${Number(m[1] ?? 1)}.${Number(m[2])}`;
      },
    },
    { key: "power.command", check: (_key, value) => checkCommandLine(value) },
  ];
}
