import type { FastifySchemaCompiler } from "fastify";
import { z } from "zod";
import { fromZodError } from "./errors.js";

/**
 * Fastify validates route inputs with zod schemas (route option `schema: { body: zodSchema }`): the
 * handler gets the parsed value (defaults filled in), a failure is the API's 400 naming the field and
 * saying what it accepts.
 */
export function zodValidatorCompiler(
  fieldHelp: Readonly<Record<string, string>>,
): FastifySchemaCompiler<z.ZodType> {
  return ({ schema, httpPart }) => {
    const accepted = schema instanceof z.ZodObject ? Object.keys(schema.shape) : [];
    const part = httpPart === "querystring" ? "query" : (httpPart ?? "body");
    const help = (field: string | undefined) =>
      (field && fieldHelp[field]) ||
      `send a JSON object with the fields ${accepted.join(", ")} (docs/serve.md)`;
    return (data) => {
      const r = schema.safeParse(data, { reportInput: true });
      return r.success ? { value: r.data } : { error: fromZodError(r.error, part, help, accepted) };
    };
  };
}
