#!/usr/bin/env node
// Entry point for `bacmqtt <command>`. The sources are TypeScript run through tsx's loader so that
// `npx bacmqtt` works straight after `npm ci`, with no build step to forget.
import { register } from "tsx/esm/api";

register();
const { main } = await import("../cli/main.ts");
await main(process.argv.slice(2));
