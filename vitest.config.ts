import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // A run that finds no test must fail: CI judges by exit code.
    passWithNoTests: false,
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: "forks",
    // Integration suites bind real ports and namespaces; two cores make more workers slower, not faster.
    maxWorkers: 2,
    reporters: ["default"],
  },
});
