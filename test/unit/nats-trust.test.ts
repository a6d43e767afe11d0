// The JWTs that operator/nats/trust.ts mints, read back claim by claim (the server's view of them
// is tested against a real nats-server in integration/nats-jwt-auth.test.ts).
import { decode, type User } from '@nats-io/jwt';
import { describe, expect, it } from 'vitest';
import { COORDINATOR_USER, OPERATOR_USER, operatorPermissions, sitePermissions, siteAgentPermissions } from '../../core/protocol/permissions.ts';
import {
  type AccountSigner,
  createNatsTrust,
  mintJobCreds,
  mintOperatorCreds,
  mintUserCreds,
  parseAccountSigner,
  renderAccountSigner,
  renderClusterNatsConfig,
} from '../../operator/nats/trust.ts';

const trust = await createNatsTrust();
const claims = (jwt: string) => decode<User>(jwt);

describe('the trust', () => {
  it('the operator names the system account; the Consort account is signed by the operator, lists the signing key and has JetStream', () => {
    const op = decode<{ system_account: string }>(trust.operator.jwt);
    expect(op.sub).toBe(trust.operator.publicKey);
    expect(op.nats.system_account).toBe(trust.systemAccount.publicKey);
    const acct = decode<{ signing_keys: string[]; limits: Record<string, unknown> }>(trust.account.jwt);
    expect(acct.iss).toBe(trust.operator.publicKey);
    expect(acct.sub).toBe(trust.signer.account);
    expect(acct.nats.signing_keys).toHaveLength(1);
    expect(acct.nats.signing_keys![0]).not.toBe(trust.signer.account);
    expect(acct.nats.limits).toMatchObject({ disk_storage: -1, streams: -1, consumer: -1, conn: -1, subs: -1, disallow_bearer: true });
  });

  it('the server configuration holds the operator inline and preloads both accounts', () => {
    const conf = renderClusterNatsConfig(trust, { listen: '0.0.0.0:4222', storeDir: '/data/jetstream', httpPort: 8222 });
    expect(conf).toContain(`operator: ${JSON.stringify(trust.operator.jwt)}`);
    expect(conf).toContain(`system_account: ${JSON.stringify(trust.systemAccount.publicKey)}`);
    expect(conf).toContain('resolver: MEMORY');
    for (const a of [trust.systemAccount, trust.account]) expect(conf).toContain(`${JSON.stringify(a.publicKey)}: ${JSON.stringify(a.jwt)}`);
    expect(conf).toContain('store_dir: "/data/jetstream"');
    expect(conf).toContain('listen: "0.0.0.0:4222"');
    expect(conf).toContain('http_port: 8222');
  });
});

describe('minted users', () => {
  it("a site's JWT carries exactly its permissions, one response per request, no bearer token, the expiry, and the account as issuer", async () => {
    const expiresAt = new Date('2030-01-02T03:04:05Z');
    const p = sitePermissions('lab_perm', 'north');
    const u = await mintUserCreds(trust.signer, { name: 'north', permissions: p, expiresAt });
    const c = claims(u.jwt);
    expect(c.name).toBe('north');
    expect(c.sub).toBe(u.publicKey);
    expect(c.exp).toBe(Math.floor(expiresAt.getTime() / 1000));
    expect(c.iss).not.toBe(trust.signer.account); // the signing key
    expect(c.nats.issuer_account).toBe(trust.signer.account);
    expect(c.nats.pub).toEqual({ allow: p.publish });
    expect(c.nats.sub).toEqual({ allow: p.subscribe });
    expect(c.nats.resp).toEqual({ max: 1, ttl: 0 });
    expect(c.nats.bearer_token).toBe(false);
    expect(u.creds).toContain(u.jwt);
    expect(u.creds).toContain(u.seed);
    expect(u.inboxPrefix).toBe('_INBOX_north');
  });

  it('an empty allow list denies everything (an absent one would allow it); no responses, no resp claim', async () => {
    const u = await mintUserCreds(trust.signer, { name: 'north', permissions: { publish: [], subscribe: ['a.b'], allowResponses: false } });
    expect(claims(u.jwt).nats.pub).toEqual({ deny: ['>'] });
    expect(claims(u.jwt).nats.resp).toBeUndefined();
    const agent = await mintUserCreds(trust.signer, { name: 'north', permissions: siteAgentPermissions('north') });
    expect(claims(agent.jwt).nats.pub).toEqual({ deny: ['>'] });
  });

  it("a job's users reply on job-qualified inboxes; a renewal keeps each user's key", async () => {
    const first = await mintJobCreds(trust.signer, 'lab_perm', ['north', 'south']);
    expect(first.coordinator.inboxPrefix).toBe('_INBOX_lab_perm__coordinator');
    expect(first.sites.north!.inboxPrefix).toBe('_INBOX_lab_perm_north');
    expect(claims(first.sites.north!.jwt).nats.sub?.allow).toContain('_INBOX_lab_perm_north.>');
    expect(first.keys).toEqual({
      coordinator: first.coordinator.publicKey,
      sites: { north: first.sites.north!.publicKey, south: first.sites.south!.publicKey },
    });
    const seeds = { [COORDINATOR_USER]: first.coordinator.seed, north: first.sites.north!.seed };
    const renewed = await mintJobCreds(trust.signer, 'lab_perm', ['north', 'south'], { seeds, expiresAt: new Date(Date.now() + 60_000) });
    expect(renewed.coordinator.publicKey).toBe(first.coordinator.publicKey);
    expect(renewed.sites.north!.publicKey).toBe(first.sites.north!.publicKey);
    expect(renewed.sites.south!.publicKey).not.toBe(first.sites.south!.publicKey);
  });

  it("the operator's user: every job's subjects, the JetStream API, every bucket, its own inbox", async () => {
    const u = await mintOperatorCreds(trust.signer);
    const c = claims(u.jwt);
    expect(c.name).toBe(OPERATOR_USER);
    expect(c.exp).toBeUndefined();
    expect(c.nats.pub?.allow).toEqual(operatorPermissions().publish);
    expect(c.nats.pub?.allow).toEqual(['consort.>', '$JS.API.>', '$JS.FC.>', '$JS.ACK.>', '$O.>']);
    expect(c.nats.sub?.allow).toEqual(['consort.>', '_INBOX__operator.>']);
  });

  it.each([
    ['a name that is not a site name', { name: 'North_1' }, /is not a user name/],
    ['a seed that is not a user seed', { name: 'north', seed: trust.signer.seed }, /not a user NKey seed/],
  ])('refuses %s', async (_what, opts, message) => {
    await expect(mintUserCreds(trust.signer, { permissions: sitePermissions('lab_perm', 'north'), ...opts })).rejects.toMatchObject({
      code: 'CONSORT_C_NATS_TRUST',
      message,
    });
  });
});

describe('account.nk', () => {
  it('round-trips the account key and the signing seed', () => {
    expect(parseAccountSigner(renderAccountSigner(trust.signer))).toEqual(trust.signer);
  });

  it.each<[string, (s: AccountSigner) => string, RegExp]>([
    ['no seed', (s) => `account: ${s.account}\n`, /no "seed: SA\.\.\." line/],
    ['no account', (s) => `seed: ${s.seed}\n`, /no "account: A\.\.\." line/],
    ['a user seed for the seed', (s) => `account: ${s.account}\nseed: SU${s.seed.slice(2)}\n`, /no "seed: SA\.\.\." line/],
    ['a corrupted seed', (s) => `account: ${s.account}\nseed: ${s.seed.slice(0, -2)}AA\n`, /not a valid account key and signing seed/],
  ])('names what is wrong: %s', (_what, text, message) => {
    expect(() => parseAccountSigner(text(trust.signer), 'secret/account.nk')).toThrow(message);
    expect(() => parseAccountSigner(text(trust.signer), 'secret/account.nk')).toThrow(/^secret\/account\.nk: /);
  });
});
