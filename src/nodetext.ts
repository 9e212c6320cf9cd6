// Text a node wrote (its console, `node run`'s output), for the admin's terminal or the dashboard.
// The node is not trusted (a hostile image, a compromised node): an escape sequence sent raw can set
// the admin's clipboard (OSC 52), retitle the terminal, move the cursor to hide or forge lines, or
// reach a terminal's own bugs. Colours (SGR: ESC [ digits and semicolons m) are what systemd and
// most tools print, and only colour text. So one rule, here, for the CLI (src/cli/node.ts) and the
// dashboard's console (src/dashboard.ts, which runs these functions' own source in the browser:
// they use nothing outside themselves):
// - SGR sequences of at most 32 parameter characters are kept (a terminal) or removed (a pipe, a
//   file, the page: plain text), and a line that set any ends with a reset (ESC [ 0 m), so a
//   node's colours (or its concealed text, SGR 8) never reach the next line, another node's output
//   or netroot's own lines;
// - tab and newline pass, a CR right before a newline is dropped (a serial line's CRLF);
// - every other control character is shown as `\xNN`: a bare ESC and so every other escape
//   sequence (OSC, DCS, a CSI other than m), C1 controls U+0080–U+009F (their UTF-8 form: a raw
//   byte 0x80–0x9f alone is not UTF-8 and was decoded as U+FFFD), BEL, backspace, a bare CR.

/** `text` from a node as the admin may see it: `colours` "keep" for a terminal, "strip" for plain
 *  text. */
export function nodeText(text: string, colours: "keep" | "strip"): string {
  const lines = text.split("\n");
  return lines.map((line, i) => {
    if (i < lines.length - 1 && line.endsWith("\r")) line = line.slice(0, -1);
    let coloured = false;
    // deno-lint-ignore no-control-regex -- finding control characters is the point
    const shown = line.replace(/\x1b\[[0-9;]{0,32}m|[\x00-\x08\x0b-\x1f\x7f-\x9f]/g, (c) => {
      if (c.length > 1) { // an SGR sequence
        coloured = colours === "keep";
        return coloured ? c : "";
      }
      return "\\x" + c.charCodeAt(0).toString(16).padStart(2, "0");
    });
    return coloured ? shown + "\x1b[0m" : shown;
  }).join("\n");
}

/** How much of `text`, a piece of a stream that goes on, nodeText can take now: up to a trailing
 *  ESC that may begin an SGR sequence, or a trailing CR that may come before a newline, which wait
 *  for the stream's next piece (shown alone, they would read as `\x1b[0;32m` or `\x0d`). */
export function nodeTextReady(text: string): number {
  // deno-lint-ignore no-control-regex -- finding control characters is the point
  const open = /\x1b(?:\[[0-9;]{0,32})?$|\r$/.exec(text);
  return open ? open.index : text.length;
}
