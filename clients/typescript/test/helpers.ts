import pg from "pg";

/** The migrated database the tests use: tests/clients/test_typescript.py passes one (a fresh clone
 * of the Python suite's template, on its embedded PostgreSQL). */
export function databaseUrl(): string {
  const url = process.env.SKIPLOCK_TEST_DATABASE_URL;
  if (!url) {
    throw new Error("set SKIPLOCK_TEST_DATABASE_URL to a migrated database (tests/clients/test_typescript.py does)");
  }
  return url;
}

export async function sql<R extends Record<string, unknown> = Record<string, unknown>>(
  text: string,
  values: unknown[] = [],
): Promise<R[]> {
  const client = new pg.Client({ connectionString: databaseUrl() });
  await client.connect();
  try {
    return (await client.query<R>(text, values)).rows;
  } finally {
    await client.end();
  }
}

export async function eventually(check: () => Promise<boolean>, timeoutMs = 30000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) {
      throw new Error(`condition not met within ${timeoutMs} ms`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
