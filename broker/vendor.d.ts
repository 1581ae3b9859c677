// aedes-persistence-redis ships no type declarations; this is the one factory the broker calls.
declare module "aedes-persistence-redis" {
  import type { Redis } from "ioredis";

  const aedesPersistenceRedis: (options?: { conn?: Redis; maxSessionDelivery?: number }) => unknown;
  export default aedesPersistenceRedis;
}
