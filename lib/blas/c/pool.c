/* The kernels' thread pool. parallel_for(n, grain, fn, args) runs fn(args, begin, end) over [0, n) in
 * chunks of `grain`, on this thread and on n_threads - 1 helper threads (started on first use and kept).
 * Chunks are claimed from a shared counter, so when a helper does not get a core this thread simply does
 * more of them; it waits only for chunks a helper has already started.
 *
 * After a job a helper spins for HELPER_SPIN_NS before it sleeps: a training step hands out a job every
 * few tens of microseconds, and waking a sleeping thread on a VM costs about as much (bench/README.md).
 * park_helpers() sends them to sleep at once, before OpenBLAS runs a product on its own threads, which
 * need the cores. A parallel_for called from a helper (a kernel inside a kernel's chunk), or while
 * another thread is using the pool, runs on the calling thread.
 *
 * Jobs live in a ring of slots. A helper that wakes late may look at a slot that has since been reused:
 * each slot carries its job's number, and it is rewritten only when no helper is inside it (the writer
 * marks it invalid, then waits for `users` to drop to 0: with sequentially consistent atomics on both
 * sides, either the writer sees the helper or the helper sees the mark). */

#include "kernels.h"

typedef void (*range_fn)(void *args, int64_t begin, int64_t end);

typedef struct {
  range_fn fn;
  void *args;
  int64_t n, grain, next, done;
} job_t;

typedef struct {
  job_t job;
  int64_t seq;   /* the job's number, -1 while the slot is rewritten */
  int32_t users; /* helpers inside the job */
} slot_t;

#define MAX_THREADS 16
#define POOL_SLOTS 64
#define HELPER_SPIN_NS 200000
static int32_t n_threads = 1;
static slot_t slots[POOL_SLOTS];
static int64_t posted = 0;      /* number of the last job handed out */
static int64_t parked = -1;     /* helpers that have seen this job sleep instead of spinning */
static int32_t helpers = 0;     /* helper threads started */
static int32_t sleepers = 0;    /* helpers waiting on `wake` */
static int32_t pool_in_use = 0; /* a thread is handing out a job */
static int64_t jobs_shared = 0; /* for tests: proof that the split path ran */
static pthread_mutex_t wake_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static __thread int32_t on_helper = 0;

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_SEQ_CST)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_SEQ_CST)

/* Threads for the kernels that split their work (1 = no helpers; 0 = leave as is); returns the
 * number in use. */
int32_t seemore_set_threads(int32_t n) {
  if (n > 0) STORE(n_threads, n > MAX_THREADS ? MAX_THREADS : n);
  return n_threads;
}

/* How many jobs parallel_for has shared with helper threads so far. */
int64_t seemore_jobs_shared(void) { return LOAD(jobs_shared); }

static void run_chunks(job_t *job) {
  for (;;) {
    int64_t begin = __atomic_fetch_add(&job->next, job->grain, __ATOMIC_RELAXED);
    if (begin >= job->n) return;
    int64_t end = begin + job->grain < job->n ? begin + job->grain : job->n;
    job->fn(job->args, begin, end);
    __atomic_fetch_add(&job->done, end - begin, __ATOMIC_RELEASE);
  }
}

static int64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

/* Waits for a job after `seen` and returns its number: spinning first (when `spin`), then asleep. */
static int64_t next_job(int64_t seen, int spin) {
  int64_t s, t0 = spin ? now_ns() : 0;
  for (uint32_t i = 1; spin; i++) {
    if ((s = LOAD(posted)) != seen) return s;
    cpu_relax();
    if (i % 32 == 0 && (LOAD(parked) >= seen || now_ns() - t0 > HELPER_SPIN_NS)) break;
  }
  pthread_mutex_lock(&wake_lock);
  __atomic_add_fetch(&sleepers, 1, __ATOMIC_SEQ_CST);
  while ((s = LOAD(posted)) == seen) pthread_cond_wait(&wake, &wake_lock);
  __atomic_sub_fetch(&sleepers, 1, __ATOMIC_SEQ_CST);
  pthread_mutex_unlock(&wake_lock);
  return s;
}

static void *helper(void *p) {
  int32_t index = (int32_t)(intptr_t)p;
  int64_t seen = LOAD(posted);
  on_helper = 1;
  for (;;) {
    seen = next_job(seen, index < LOAD(n_threads) - 1);
    if (index >= LOAD(n_threads) - 1) continue; /* fewer threads wanted now */
    slot_t *slot = &slots[seen % POOL_SLOTS];
    __atomic_add_fetch(&slot->users, 1, __ATOMIC_SEQ_CST);
    if (LOAD(slot->seq) == seen) run_chunks(&slot->job);
    __atomic_sub_fetch(&slot->users, 1, __ATOMIC_SEQ_CST);
  }
  return NULL;
}

static void start_helpers(void) {
  while (helpers < n_threads - 1) {
    pthread_t thread;
    if (pthread_create(&thread, NULL, helper, (void *)(intptr_t)helpers) != 0) return;
    pthread_detach(thread);
    helpers++;
  }
}

/* Spinning helpers go to sleep now (until the next job). */
static void park_helpers(void) { STORE(parked, LOAD(posted)); }

static void parallel_for(int64_t n, int64_t grain, range_fn fn, void *args) {
  if (grain < 1) grain = 1;
  int32_t free_pool = 0;
  if (n_threads <= 1 || n < 2 * grain || on_helper ||
      !__atomic_compare_exchange_n(&pool_in_use, &free_pool, 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    if (n > 0) fn(args, 0, n);
    return;
  }
  start_helpers();
  int64_t seq = posted + 1;
  slot_t *slot = &slots[seq % POOL_SLOTS];
  STORE(slot->seq, -1);
  while (LOAD(slot->users) != 0) sched_yield();
  slot->job = (job_t){fn, args, n, grain, 0, 0};
  STORE(slot->seq, seq);
  STORE(posted, seq);
  if (LOAD(sleepers) > 0) {
    pthread_mutex_lock(&wake_lock);
    pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&wake_lock);
  }
  __atomic_add_fetch(&jobs_shared, 1, __ATOMIC_RELAXED);
  run_chunks(&slot->job);
  while (__atomic_load_n(&slot->job.done, __ATOMIC_ACQUIRE) < n) sched_yield();
  STORE(pool_in_use, 0);
}

/* Elements per chunk for the elementwise kernels, and heads per chunk for attention: big enough that
 * handing a chunk to a helper pays, and that small calls (generation's rows) never involve one; 2^14
 * also splits the decoder's layer norms (800 x 128). */
#define GRAIN (1 << 14)
#define ATTENTION_GRAIN 16
