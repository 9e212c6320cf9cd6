// Errors a user can act on. `status` maps onto HTTP (API) and the message is the one clear line
// the CLI prints on stderr.
export class UserError extends Error {
  constructor(
    message: string,
    readonly status: 400 | 401 | 404 | 409 | 500 | 502 | 503 | 507 = 400,
  ) {
    super(message);
    this.name = "UserError";
  }
}
export const notFound = (what: string) => new UserError(`${what} not found`, 404);
export const conflict = (msg: string) => new UserError(msg, 409);
