// pg-boss side of Ratchet's peer benchmark (bench/peers/run.py).
//   node bench.mjs setup   DSN            schema + queue "bench"
//   node bench.mjs prefill DSN N          N jobs in one insert() per 1,000
//   node bench.mjs trickle DSN N MS       N jobs, send() one at a time, MS apart
//   node bench.mjs worker  DSN W          W work() loops (batchSize 1, no-op handler)
//                                         until SIGTERM; prints "ready" when started
import PgBoss from 'pg-boss'

const [mode, dsn, a, b] = process.argv.slice(2)
const QUEUE = 'bench'
const workers = mode === 'worker' ? Number(a) : 1
const boss = new PgBoss({
  connectionString: dsn,
  max: workers + 2,
  supervise: false,
  schedule: false,
  migrate: mode === 'setup'
})
boss.on('error', (err) => console.error(err))
await boss.start()

if (mode === 'setup') {
  await boss.createQueue(QUEUE)
} else if (mode === 'prefill') {
  let left = Number(a)
  while (left > 0) {
    const n = Math.min(left, 1000)
    await boss.insert(Array.from({ length: n }, () => ({ name: QUEUE, data: {} })))
    left -= n
  }
} else if (mode === 'trickle') {
  for (let i = 0; i < Number(a); i++) {
    await boss.send(QUEUE, {})
    await new Promise((resolve) => setTimeout(resolve, Number(b)))
  }
} else if (mode === 'worker') {
  // W loops of fetch() (one job) + complete(): boss.work() in pg-boss 10 waits
  // its polling interval (at least 0.5 s) between fetches even when jobs are
  // waiting, so it would measure the interval; an empty fetch waits 0.5 s
  let running = true
  process.once('SIGTERM', () => { running = false })
  const handler = async () => {}
  const loop = async () => {
    while (running) {
      const jobs = await boss.fetch(QUEUE, { batchSize: 1 })
      if (!jobs || jobs.length === 0) {
        await new Promise((resolve) => setTimeout(resolve, 500))
        continue
      }
      await handler(jobs[0])
      await boss.complete(QUEUE, jobs[0].id)
    }
  }
  const loops = Array.from({ length: workers }, loop)
  console.log('ready')
  await Promise.all(loops)
}
await boss.stop({ graceful: false, wait: true })
process.exit(0)
