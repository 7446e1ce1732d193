// cudaemu.cpp — an emulated CUDA device: the driver, NVRTC, cuBLAS and NCCL entry points Sdp calls, with their
// real C signatures, running kernels compiled as host C++ (see cudaemu.h) on the CPU.
//
//   NVRTC      nvrtcCompileProgram runs the host compiler (clang++-14, clang++ or g++; SDP_CUDAEMU_CXX
//              overrides) on the source with cudaemu.h force-included, into a shared object cached on
//              disk by content hash. Its "PTX" is a token naming that file; cuModuleLoadData dlopens it.
//   launches   every CUDA thread of a block is a fiber on a worker OS thread; a barrier or a warp
//              operation hands control directly to the next runnable fiber. Blocks are spread over a
//              pool of worker threads. cuLaunchKernel runs the grid to completion before returning, so
//              streams and events are trivially ordered.
//   memory     device memory is host memory between guard pages, poisoned with 0xFF bytes (NaN as float)
//              when allocated, shared memory likewise before every block.
//   cuBLAS     the GEMM subset Sdp uses (Sgemm, SgemmStridedBatched, Dgemm, DgemmStridedBatched, GemmEx
//              fp32/TF32): packed, cache-blocked, multi-threaded (CUDAEMU_BLAS_THREADS) with an AVX2+FMA
//              micro-kernel picked at run time; each element accumulates in double in k order, so results
//              do not depend on the thread count. Column-major, pointer mode host, cuBLAS's status codes.
//   NCCL       communicators over the CUDAEMU_DEVICES emulated devices of this process (default 4):
//              all-reduce and broadcast in fixed rank order, split, groups; mismatches and missing ranks
//              are errors with a message, never hangs. Allocations are tagged with their device. Across
//              processes (one emulated device each, under mpirun), communicators travel over the process's
//              already-loaded Open MPI, with the same rank-ordered sums (CUDAEMU_NCCL_TRANSPORT).
//   errors     a fault on a guard page (or anywhere) inside kernel code becomes CUDA_ERROR_ILLEGAL_ADDRESS
//              naming kernel, block, thread and the allocation; barrier misuse and warp deadlocks become
//              CUDA_ERROR_LAUNCH_FAILED. The detail is in cudaemuGetLastErrorMessage(), an extension the
//              C# binding reads when it finds this library. Errors are not sticky (unlike a real context).
#define CUDAEMU_RUNTIME  // only the ABI part of the header
#include "cudaemu.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <ftw.h>
#include <link.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#define EXPORT extern "C" __attribute__((visibility("default")))

extern char** environ;

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef int nvrtcResult;

enum : int {
    CUDA_SUCCESS = 0, CUDA_ERROR_INVALID_VALUE = 1, CUDA_ERROR_OUT_OF_MEMORY = 2, CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_NO_DEVICE = 100, CUDA_ERROR_INVALID_DEVICE = 101, CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_CONTEXT = 201, CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND = 302,
    CUDA_ERROR_INVALID_HANDLE = 400, CUDA_ERROR_NOT_FOUND = 500, CUDA_ERROR_NOT_READY = 600,
    CUDA_ERROR_ILLEGAL_ADDRESS = 700, CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701, CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801, CUDA_ERROR_UNKNOWN = 999,
};
enum : int {
    NVRTC_SUCCESS = 0, NVRTC_ERROR_OUT_OF_MEMORY = 1, NVRTC_ERROR_PROGRAM_CREATION_FAILURE = 2,
    NVRTC_ERROR_INVALID_INPUT = 3, NVRTC_ERROR_INVALID_PROGRAM = 4, NVRTC_ERROR_INVALID_OPTION = 5,
    NVRTC_ERROR_COMPILATION = 6, NVRTC_ERROR_INTERNAL_ERROR = 11,
};

namespace {

// ---- limits of the emulated device (an H100/H200-like sm_90) -------------------------------------
constexpr int kWarp = 32;
constexpr int kMaxThreads = 1024;
constexpr unsigned kDefaultDynSmem = 48 * 1024;   // without cuFuncSetAttribute(..., 8, bytes)
constexpr unsigned kMaxDynSmem = 232448;          // CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
constexpr size_t kPage = 4096;
constexpr size_t kAlign = 16;                     // allocation alignment: ends sit flush on the guard page
constexpr unsigned char kPoison = 0xFF;           // 0xFFFFFFFF is a NaN float (and -1 as int)
constexpr unsigned char kCanary = 0xCA;
const char* const kTokenPrefix = "CUDAEMU-MODULE:";

// ---- per-thread error detail ---------------------------------------------------------------------
thread_local char t_message[4096];

CUresult fail(CUresult code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
CUresult fail(CUresult code, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t_message, sizeof t_message, fmt, ap);
    va_end(ap);
    return code;
}

long env_long(const char* name, long fallback) {
    const char* v = getenv(name);
    return v && *v ? strtol(v, nullptr, 10) : fallback;
}

// ---- device memory -------------------------------------------------------------------------------
struct Alloc {
    uintptr_t user;   // what cuMemAlloc returned
    size_t size;
    char* map;        // [guard page][data pages][guard page]
    size_t map_len;
    int device;
};
std::mutex g_mem_mutex;
std::map<uintptr_t, Alloc> g_allocs;  // keyed by user address
size_t g_used[16] = {};   // bytes mapped per device

size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }
size_t device_total() { return (size_t)env_long("CUDAEMU_MEMORY_MB", 16384) << 20; }

// The allocation containing [p, p+n) (n may be 0: then p may equal the end). Caller holds g_mem_mutex.
const Alloc* find_alloc(uintptr_t p, size_t n) {
    auto it = g_allocs.upper_bound(p);
    if (it == g_allocs.begin()) return nullptr;
    --it;
    const Alloc& a = it->second;
    if (p >= a.user && p + n <= a.user + a.size && p <= a.user + a.size) return &a;
    return nullptr;
}

bool valid_range(uintptr_t p, size_t n) {
    std::lock_guard<std::mutex> lock(g_mem_mutex);
    return find_alloc(p, n) != nullptr;
}

// Writes past the end that stayed inside the <16-byte alignment tail (so missed the guard page).
std::string check_canaries() {
    std::lock_guard<std::mutex> lock(g_mem_mutex);
    for (auto& [user, a] : g_allocs) {
        unsigned char* tail = (unsigned char*)(a.user + a.size);
        size_t slack = round_up(a.size, kAlign) - a.size;
        for (size_t i = 0; i < slack; i++) {
            if (tail[i] != kCanary) {
                char buf[256];
                snprintf(buf, sizeof buf, "a kernel wrote %zu byte(s) past the end of the %zu-byte allocation at 0x%llx",
                         i + 1, a.size, (unsigned long long)a.user);
                memset(tail, kCanary, slack);
                return buf;
            }
        }
    }
    return {};
}

// ---- contexts, streams, events, modules ----------------------------------------------------------
struct Context { int device; int refs; };
struct Stream { unsigned magic = 0x5752u; };
struct Event { unsigned magic = 0xE7E7u; bool recorded = false; double ms = 0; };

struct Module;
struct Function {
    Module* module;
    const cudaemu_kernel_entry* entry;
    unsigned max_dyn_smem = kDefaultDynSmem;
};
struct Module {
    void* handle;
    std::string path;
    std::vector<std::unique_ptr<Function>> functions;
    size_t tls_size = 0;                  // the module's thread_local block: its static __shared__ variables
    size_t tls_modid = 0;
    void* (*tls_touch)() = nullptr;
};

std::atomic<bool> g_initialized{false};
int g_device_count = 1;
Context g_contexts[16];
thread_local Context* t_current = nullptr;

CUresult need_context() {
    if (!g_initialized) return fail(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    if (!t_current) return fail(CUDA_ERROR_INVALID_CONTEXT, "no current context on this thread (call cuCtxSetCurrent first)");
    return CUDA_SUCCESS;
}

// ---- fibers --------------------------------------------------------------------------------------
#if defined(__x86_64__) && !defined(CUDAEMU_USE_UCONTEXT)
// Saves the callee-saved registers on the old stack, swaps stack pointers, restores. About 20
// instructions; the FP control words are not saved (kernels do not change them).
asm(R"(
.text
.globl cudaemu_switch
.hidden cudaemu_switch
.type cudaemu_switch,@function
cudaemu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size cudaemu_switch, .-cudaemu_switch
)");
extern "C" void cudaemu_switch(void** save_sp, void* new_sp);
struct FiberCtx { void* sp; };
void ctx_init(FiberCtx& c, char* stack_top, void (*entry)()) {
    uintptr_t top = (uintptr_t)stack_top & ~(uintptr_t)15;
    void** sp = (void**)top;
    *--sp = nullptr;          // fake return address of entry: at entry rsp % 16 == 8, as after a call
    *--sp = (void*)entry;     // popped by cudaemu_switch's ret
    for (int i = 0; i < 6; i++) *--sp = nullptr;  // rbp rbx r12-r15
    c.sp = sp;
}
inline void ctx_switch(FiberCtx& from, FiberCtx& to) { cudaemu_switch(&from.sp, to.sp); }
#else
struct FiberCtx { ucontext_t uc; };
void ctx_init(FiberCtx& c, char* stack_top, void (*entry)(), size_t stack_size) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack_top - stack_size;
    c.uc.uc_stack.ss_size = stack_size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
inline void ctx_switch(FiberCtx& from, FiberCtx& to) { swapcontext(&from.uc, &to.uc); }
#endif

enum FiberState : unsigned char { READY, AT_BARRIER, AT_WARP, DONE };

struct Fiber {
    FiberCtx ctx;
    cudaemu_thread_ctx tc;
    FiberState state;
    int op;           // warp operation posted while AT_WARP
    unsigned mask;
    int arg, width;
    unsigned long long value, result;
};

struct Launch {
    Function* fn;
    dim3 grid, block;
    unsigned smem;
    void** params;
    unsigned long long total_blocks;
    std::atomic<unsigned long long> next{0};
    std::atomic<bool> failed{false};
    std::mutex err_mutex;
    CUresult err = CUDA_SUCCESS;
    std::string message;
    void set_error(CUresult code, const std::string& msg) {
        std::lock_guard<std::mutex> lock(err_mutex);
        if (err == CUDA_SUCCESS) { err = code; message = msg; }
        failed = true;
    }
};

struct Worker {
    pthread_t thread{};
    std::vector<Fiber> fibers = std::vector<Fiber>(kMaxThreads);
    std::vector<char*> stacks;     // stack top per fiber slot, grown on demand
    size_t stack_size = 0;
    FiberCtx sched{};
    int n = 0, cur = 0, at_barrier = 0, done = 0;
    int warp_arrived[kMaxThreads / kWarp];  // lanes waiting in a warp operation, per warp
    Launch* launch = nullptr;
    CUresult block_err = CUDA_SUCCESS;
    std::string block_msg;
    char* module_tls = nullptr;
    // written by the signal handler, read after siglongjmp
    sigjmp_buf jmp;
    volatile sig_atomic_t in_kernel = 0;
    volatile int fault_sig = 0;
    void* volatile fault_addr = nullptr;
    volatile int fault_write = -1;
    std::vector<std::pair<char*, char*>> stack_guards;
};

// Fixed table the signal handler scans (no locks, no TLS: the faulting thread may be any thread).
constexpr int kMaxWorkers = 64;
std::atomic<int> g_worker_count{0};
pthread_t g_worker_threads[kMaxWorkers];
Worker* g_worker_ptrs[kMaxWorkers];

thread_local Worker* t_worker = nullptr;

dim3 unlinear(unsigned long long i, dim3 d) {
    return dim3((unsigned)(i % d.x), (unsigned)((i / d.x) % d.y), (unsigned)(i / ((unsigned long long)d.x * d.y)));
}

std::string fmt3(dim3 d) {
    char b[64];
    snprintf(b, sizeof b, "(%u,%u,%u)", d.x, d.y, d.z);
    return b;
}
std::string fmt3(uint3 d) { return fmt3(dim3(d.x, d.y, d.z)); }

std::string where(Worker* w, int fiber) {
    const cudaemu_thread_ctx& tc = w->fibers[fiber].tc;
    return "kernel '" + std::string(w->launch->fn->entry->name) + "' block " + fmt3(tc.blockIdx) + " thread " + fmt3(tc.threadIdx);
}

// Control passes straight to the next runnable fiber of the block; the scheduler (the worker's own
// stack) gets it back only when nobody can run: the block is done, or it is stuck.
void yield(Worker* w) {
    int i = w->cur, n = w->n;
    for (int k = 1; k <= n; k++) {
        int j = i + k < n ? i + k : i + k - n;
        if (w->fibers[j].state == READY) {
            w->cur = j;
            ctx_switch(w->fibers[i].ctx, w->fibers[j].ctx);
            return;
        }
    }
    ctx_switch(w->fibers[i].ctx, w->sched);
}

[[noreturn]] void abort_block(Worker* w, CUresult code, const std::string& msg) {
    w->block_err = code;
    w->block_msg = msg;
    ctx_switch(w->fibers[w->cur].ctx, w->sched);
    __builtin_unreachable();
}

void fiber_entry() {
    Worker* w = t_worker;
    w->launch->fn->entry->thunk(w->launch->params);
    w->fibers[w->cur].state = DONE;
    w->done++;
    yield(w);
    __builtin_unreachable();
}

std::string lanes_text(unsigned m) {
    std::string s;
    for (int l = 0; l < kWarp;) {
        if (!(m >> l & 1)) { l++; continue; }
        int e = l;
        while (e + 1 < kWarp && (m >> (e + 1) & 1)) e++;
        if (!s.empty()) s += ",";
        s += std::to_string(l);
        if (e > l) s += "-" + std::to_string(e);
        l = e + 1;
    }
    return s.empty() ? "none" : s;
}

const char* op_name(int op) {
    switch (op) {
    case CUDAEMU_SYNCWARP: return "__syncwarp";
    case CUDAEMU_SHFL: return "__shfl_sync";
    case CUDAEMU_SHFL_XOR: return "__shfl_xor_sync";
    case CUDAEMU_SHFL_DOWN: return "__shfl_down_sync";
    case CUDAEMU_SHFL_UP: return "__shfl_up_sync";
    case CUDAEMU_BALLOT: return "__ballot_sync";
    case CUDAEMU_ANY: return "__any_sync";
    case CUDAEMU_ALL: return "__all_sync";
    default: return "warp operation";
    }
}

// The block cannot go on: say why, in terms of CUDA.
std::string diagnose_stuck(Worker* w) {
    for (int i = 0; i < w->n; i++) {
        if (w->fibers[i].state != AT_WARP) continue;
        int warp = i / kWarp, base = warp * kWarp;
        const Fiber& f = w->fibers[i];
        unsigned waiting = 0, exited = 0, barrier = 0, other = 0;
        for (int l = 0; l < kWarp && base + l < w->n; l++) {
            const Fiber& g = w->fibers[base + l];
            if (!(f.mask >> l & 1)) continue;
            if (g.state == AT_WARP && g.op == f.op && g.mask == f.mask) waiting |= 1u << l;
            else if (g.state == DONE) exited |= 1u << l;
            else if (g.state == AT_BARRIER) barrier |= 1u << l;
            else other |= 1u << l;
        }
        std::string msg = "deadlock in " + where(w, i) + ": warp " + std::to_string(warp) + " lanes " + lanes_text(waiting) +
                          " wait in " + op_name(f.op) + "(mask 0x";
        char hex[16];
        snprintf(hex, sizeof hex, "%08x", f.mask);
        msg += hex;
        msg += ")";
        if (exited) msg += "; lanes " + lanes_text(exited) + " have exited";
        if (barrier) msg += "; lanes " + lanes_text(barrier) + " wait at __syncthreads";
        if (other) msg += "; lanes " + lanes_text(other) + " wait in a different warp operation";
        msg += " (a warp operation whose mask names lanes that never reach it, e.g. a full-mask shuffle inside a divergent branch)";
        return msg;
    }
    int first_done = -1, first_wait = -1;
    for (int i = 0; i < w->n; i++) {
        if (w->fibers[i].state == DONE && first_done < 0) first_done = i;
        if (w->fibers[i].state == AT_BARRIER && first_wait < 0) first_wait = i;
    }
    std::string msg = "barrier misuse in " + where(w, first_wait >= 0 ? first_wait : 0) + ": __syncthreads reached by " +
                      std::to_string(w->at_barrier) + " of " + std::to_string(w->n) + " threads; " + std::to_string(w->done) +
                      " threads exited without reaching it";
    if (first_done >= 0) msg += " (e.g. thread " + fmt3(w->fibers[first_done].tc.threadIdx) + ")";
    msg += ": a return or a branch before __syncthreads that not every thread of the block takes";
    return msg;
}

void ensure_stacks(Worker* w, int n) {
    if ((int)w->stacks.size() >= n) return;
    if (!w->stack_size) w->stack_size = round_up((size_t)env_long("CUDAEMU_STACK_KB", 64) << 10, kPage);
    size_t slot = w->stack_size + kPage;  // a guard page below each stack
    int have = (int)w->stacks.size(), add = n - have;
    char* region = (char*)mmap(nullptr, slot * add, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (region == MAP_FAILED) { perror("cudaemu: fiber stacks"); abort(); }
    for (int i = 0; i < add; i++) {
        char* base = region + slot * i;
        mprotect(base, kPage, PROT_NONE);
        w->stack_guards.push_back({base, base + kPage});
        // Stagger the tops by a cache line per fiber: stacks a fixed power of two apart would
        // compete for the same cache sets.
        w->stacks.push_back(base + slot - (size_t)((have + i) % 64) * 64);
    }
}

void poison_shared(Worker* w, unsigned smem) {
    if (smem) memset(dyn_smem, kPoison, smem);
    if (w->module_tls) memset(w->module_tls, kPoison, w->launch->fn->module->tls_size);
}

void run_block(Worker* w, unsigned long long b) {
    Launch* L = w->launch;
    int n = (int)(L->block.x * L->block.y * L->block.z);
    dim3 bi = unlinear(b, L->grid);
    ensure_stacks(w, n);
    w->n = n;
    w->at_barrier = w->done = 0;
    w->block_err = CUDA_SUCCESS;
    memset(w->warp_arrived, 0, sizeof w->warp_arrived);
    for (int i = 0; i < n; i++) {
        Fiber& f = w->fibers[i];
        dim3 ti = unlinear((unsigned long long)i, L->block);
        f.tc = cudaemu_thread_ctx{{ti.x, ti.y, ti.z}, {bi.x, bi.y, bi.z}, L->block, L->grid};
        f.state = READY;
#if defined(__x86_64__) && !defined(CUDAEMU_USE_UCONTEXT)
        ctx_init(f.ctx, w->stacks[i], fiber_entry);
#else
        ctx_init(f.ctx, w->stacks[i], fiber_entry, w->stack_size - 1024);
#endif
    }
    poison_shared(w, L->smem);
    w->cur = 0;
    w->in_kernel = 1;
    ctx_switch(w->sched, w->fibers[0].ctx);
    w->in_kernel = 0;
    if (w->block_err != CUDA_SUCCESS) L->set_error(w->block_err, w->block_msg);
    else if (w->done != n) L->set_error(CUDA_ERROR_LAUNCH_FAILED, diagnose_stuck(w));
}

std::string describe_fault(Worker* w) {
    uintptr_t a = (uintptr_t)w->fault_addr;
    std::string access = w->fault_write == 1 ? "write" : w->fault_write == 0 ? "read" : "access";
    char buf[512];
    if (w->fault_sig == SIGFPE)
        return where(w, w->cur) + ": arithmetic exception (integer division by zero?); a GPU would not trap here but the result is undefined";
    for (auto& g : w->stack_guards)
        if (a >= (uintptr_t)g.first && a < (uintptr_t)g.second)
            return where(w, w->cur) + ": stack overflow of the emulated thread (CUDAEMU_STACK_KB raises the 64 KiB per thread)";
    std::string what;
    {
        std::lock_guard<std::mutex> lock(g_mem_mutex);
        for (auto& [user, al] : g_allocs) {
            uintptr_t lo = (uintptr_t)al.map, hi = lo + al.map_len;
            if (a < lo || a >= hi) continue;
            if (a >= al.user + al.size)
                snprintf(buf, sizeof buf, "%zu bytes past the end of the %zu-byte allocation at 0x%llx (byte offset %zu)",
                         (size_t)(a - al.user - al.size), al.size, (unsigned long long)al.user, (size_t)(a - al.user));
            else
                snprintf(buf, sizeof buf, "%zu bytes before the start of the %zu-byte allocation at 0x%llx",
                         (size_t)(al.user - a), al.size, (unsigned long long)al.user);
            what = buf;
        }
    }
    if (what.empty()) {
        if (a < 65536) snprintf(buf, sizeof buf, "a null pointer (+%zu bytes)", (size_t)a);
        else snprintf(buf, sizeof buf, "an address that is not device memory (a host pointer, or freed memory)");
        what = buf;
    }
    snprintf(buf, sizeof buf, ": out-of-bounds %s at 0x%llx, ", access.c_str(), (unsigned long long)a);
    return where(w, w->cur) + buf + what;
}

// One worker's share of a launch: blocks taken from a shared counter until none are left.
__attribute__((noinline)) void run_blocks(Worker* w, Launch* L) {
    for (;;) {
        if (L->failed) return;
        unsigned long long b = L->next.fetch_add(1);
        if (b >= L->total_blocks) return;
        run_block(w, b);
    }
}

void run_launch(Worker* w, Launch* L) {
    w->launch = L;
    w->module_tls = nullptr;
    Module* m = L->fn->module;
    if (m->tls_touch) {
        m->tls_touch();  // makes the module's TLS block exist on this thread
        void* p = nullptr;
        if (dlinfo(m->handle, RTLD_DI_TLS_DATA, &p) == 0) w->module_tls = (char*)p;
    }
    if (sigsetjmp(w->jmp, 1)) {
        w->in_kernel = 0;
        L->set_error(CUDA_ERROR_ILLEGAL_ADDRESS, describe_fault(w));
        return;
    }
    run_blocks(w, L);
}

// ---- the worker pool -----------------------------------------------------------------------------
struct Pool {
    std::mutex m;
    std::condition_variable start, finished;
    unsigned long long generation = 0;
    int active = 0;
    Launch* launch = nullptr;
    std::vector<Worker*> workers;
    std::mutex launch_mutex;  // one grid at a time
};
Pool* g_pool = nullptr;
std::once_flag g_pool_once;

void worker_main(Worker* w, int index) {
    t_worker = w;
    w->thread = pthread_self();
    // The signal handler runs on its own stack: a fiber's stack may be the thing that overflowed.
    stack_t ss{};
    ss.ss_size = 64 * 1024;
    ss.ss_sp = malloc(ss.ss_size);
    sigaltstack(&ss, nullptr);
    g_worker_threads[index] = w->thread;
    g_worker_ptrs[index] = w;
    g_worker_count.fetch_add(1);
    unsigned long long seen = 0;
    for (;;) {
        Launch* L;
        {
            std::unique_lock<std::mutex> lock(g_pool->m);
            g_pool->start.wait(lock, [&] { return g_pool->generation != seen; });
            seen = g_pool->generation;
            L = g_pool->launch;
        }
        run_launch(w, L);
        std::lock_guard<std::mutex> lock(g_pool->m);
        if (--g_pool->active == 0) g_pool->finished.notify_all();
    }
}

void start_pool() {
    g_pool = new Pool();  // leaked on purpose: the workers live as long as the process
    long n = env_long("CUDAEMU_WORKERS", (long)std::max(1u, std::thread::hardware_concurrency()));
    n = std::clamp(n, 1L, (long)kMaxWorkers);
    for (int i = 0; i < n; i++) {
        Worker* w = new Worker();
        g_pool->workers.push_back(w);
        std::thread(worker_main, w, i).detach();
    }
    while (g_worker_count.load() < n) std::this_thread::yield();
}

CUresult run_grid(Launch& L) {
    std::call_once(g_pool_once, start_pool);
    std::lock_guard<std::mutex> serial(g_pool->launch_mutex);
    {
        std::unique_lock<std::mutex> lock(g_pool->m);
        g_pool->launch = &L;
        g_pool->active = (int)g_pool->workers.size();
        g_pool->generation++;
        g_pool->start.notify_all();
        g_pool->finished.wait(lock, [] { return g_pool->active == 0; });
        g_pool->launch = nullptr;
    }
    std::string canary = check_canaries();
    if (L.err == CUDA_SUCCESS && !canary.empty())
        L.set_error(CUDA_ERROR_ILLEGAL_ADDRESS, "after kernel '" + std::string(L.fn->entry->name) + "': " + canary);
    if (L.err != CUDA_SUCCESS) return fail(L.err, "%s", L.message.c_str());
    return CUDA_SUCCESS;
}

// ---- signals -------------------------------------------------------------------------------------
struct sigaction g_previous[65];

void on_signal(int sig, siginfo_t* si, void* uc) {
    pthread_t self = pthread_self();
    int n = g_worker_count.load(std::memory_order_acquire);
    for (int i = 0; i < n; i++) {
        if (!pthread_equal(g_worker_threads[i], self)) continue;
        Worker* w = g_worker_ptrs[i];
        if (!w->in_kernel) break;
        w->fault_sig = sig;
        w->fault_addr = si->si_addr;
#if defined(__x86_64__)
        w->fault_write = sig == SIGSEGV ? (int)((((ucontext_t*)uc)->uc_mcontext.gregs[REG_ERR] >> 1) & 1) : -1;
#endif
        siglongjmp(w->jmp, 1);
    }
    // Not ours (the .NET runtime turns its own faults into exceptions): hand it on.
    struct sigaction& prev = g_previous[sig];
    if (prev.sa_flags & SA_SIGINFO) {
        prev.sa_sigaction(sig, si, uc);
    } else if (prev.sa_handler == SIG_DFL || prev.sa_handler == SIG_IGN) {
        signal(sig, SIG_DFL);  // returning re-executes the faulting instruction: default action
    } else {
        prev.sa_handler(sig);
    }
}

void install_handlers() {
    for (int sig : {SIGSEGV, SIGBUS, SIGFPE}) {
        struct sigaction sa{};
        sa.sa_sigaction = on_signal;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigaction(sig, &sa, &g_previous[sig]);
    }
}

// ---- NVRTC: the host compiler -------------------------------------------------------------------
struct Program {
    std::string source, name;
    std::vector<std::pair<std::string, std::string>> headers;  // (include name, text)
    std::string log, token;
};

std::string self_dir() {
    Dl_info info{};
    dladdr((void*)&fail, &info);
    std::string p = info.dli_fname ? info.dli_fname : "";
    size_t slash = p.rfind('/');
    return slash == std::string::npos ? "." : p.substr(0, slash);
}

bool is_executable(const std::string& p) { return access(p.c_str(), X_OK) == 0; }

std::string find_in_path(const std::string& name) {
    if (name.find('/') != std::string::npos) return is_executable(name) ? name : "";
    const char* path = getenv("PATH");
    std::stringstream ss(path ? path : "/usr/bin:/bin");
    std::string dir;
    while (std::getline(ss, dir, ':'))
        if (!dir.empty() && is_executable(dir + "/" + name)) return dir + "/" + name;
    return "";
}

std::string find_compiler() {
    if (const char* c = getenv("SDP_CUDAEMU_CXX"); c && *c) return find_in_path(c);
    for (const char* c : {"clang++-14", "clang++", "g++"})
        if (std::string p = find_in_path(c); !p.empty()) return p;
    return "";
}

bool read_file(const std::string& path, std::string& out) {
    std::ifstream f(path, std::ios::binary);
    if (!f) return false;
    std::stringstream ss;
    ss << f.rdbuf();
    out = ss.str();
    return true;
}

bool write_file(const std::string& path, const std::string& text) {
    std::ofstream f(path, std::ios::binary);
    f << text;
    return (bool)f;
}

void mkdirs(const std::string& path) {
    for (size_t i = 1; i <= path.size(); i++)
        if (i == path.size() || path[i] == '/') mkdir(path.substr(0, i).c_str(), 0755);
}

// Runs argv, appending its stdout and stderr to log. Returns the exit status.
int run_process(const std::vector<std::string>& argv, const std::string& out_file, std::string& log) {
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    pid_t pid;
    int rc = posix_spawn(&pid, argv[0].c_str(), &fa, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) { log += "cudaemu: cannot start " + argv[0] + ": " + strerror(rc) + "\n"; return -1; }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    std::string out;
    read_file(out_file, out);
    log += out;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

struct Hash {
    unsigned long long a = 1469598103934665603ull, b = 0x84222325cbf29ce4ull;
    void add(const std::string& s) {
        for (unsigned char c : s) { a = (a ^ c) * 1099511628211ull; b = (b ^ c) * 0x100000001b3ull + 7; }
        a = (a ^ 0xff) * 1099511628211ull;  // separator: ("ab","c") differs from ("a","bc")
    }
    std::string hex() const { char buf[40]; snprintf(buf, sizeof buf, "%016llx%016llx", a, b); return buf; }
};

std::string cache_dir() {
    if (const char* d = getenv("CUDAEMU_CACHE_DIR"); d && *d) return d;
    if (const char* d = getenv("SDP_KERNEL_CACHE"); d && *d) return std::string(d) + "/cudaemu";
    if (const char* d = getenv("XDG_CACHE_HOME"); d && *d) return std::string(d) + "/sdp/cudaemu";
    if (const char* d = getenv("HOME"); d && *d) return std::string(d) + "/.cache/sdp/cudaemu";
    return "/tmp/sdp-cudaemu-" + std::to_string(getuid());
}

// Kernel names: the __global__ marker attribute, then `void`, then the name, in the preprocessed text.
std::vector<std::string> find_kernels(const std::string& pre) {
    const std::string marker = "__attribute__((visibility(\"default\"), used))";
    std::vector<std::string> names;
    std::set<std::string> seen;
    for (size_t at = pre.find(marker); at != std::string::npos; at = pre.find(marker, at + 1)) {
        size_t i = at + marker.size();
        auto skip = [&] { while (i < pre.size() && isspace((unsigned char)pre[i])) i++; };
        skip();
        if (pre.compare(i, 4, "void") != 0) continue;
        i += 4;
        skip();
        size_t s = i;
        while (i < pre.size() && (isalnum((unsigned char)pre[i]) || pre[i] == '_')) i++;
        std::string name = pre.substr(s, i - s);
        skip();
        if (name.empty() || i >= pre.size() || pre[i] != '(') continue;
        if (seen.insert(name).second) names.push_back(name);
    }
    return names;
}

std::string thunks(const std::vector<std::string>& names) {
    std::string s = "\n// ---- generated by cudaemu nvrtcCompileProgram ----\n";
    s += "extern \"C\" { __attribute__((visibility(\"default\"))) thread_local char cudaemu_tls_anchor; }\n"
         "extern \"C\" __attribute__((visibility(\"default\"))) void* cudaemu_tls_touch(void) { return &cudaemu_tls_anchor; }\n";
    for (auto& n : names)
        s += "extern \"C\" void cudaemu_thunk_" + n + "(void** p) { cudaemu_detail::invoke(&" + n + ", p); }\n";
    s += "extern \"C\" __attribute__((visibility(\"default\"))) const cudaemu_kernel_entry cudaemu_kernels[] = {\n";
    for (auto& n : names)
        s += "  {\"" + n + "\", &cudaemu_thunk_" + n + ", decltype(cudaemu_detail::describe(&" + n + "))::count, decltype(cudaemu_detail::describe(&" + n +
             "))::sizes, decltype(cudaemu_detail::describe(&" + n + "))::pointers},\n";
    s += "  {nullptr, nullptr, 0, nullptr, nullptr}};\n";
    return s;
}

nvrtcResult compile(Program& p, int num_options, const char* const* options) {
    p.log.clear();
    p.token.clear();
    std::string cxx = find_compiler();
    if (cxx.empty()) {
        p.log = "cudaemu: no host compiler found (tried $SDP_CUDAEMU_CXX, clang++-14, clang++, g++); install clang-14\n";
        return NVRTC_ERROR_COMPILATION;
    }
    std::string dir = self_dir(), header_path = dir + "/cudaemu.h", header;
    if (!read_file(header_path, header)) {
        p.log = "cudaemu: cannot read " + header_path + " (it must sit next to libcudaemu.so)\n";
        return NVRTC_ERROR_INTERNAL_ERROR;
    }
    // Options: -D/-I/-U pass through; GPU-only ones (arch, -lineinfo, fast math, std) are ignored.
    std::vector<std::string> user;
    bool debug = false;
    for (int i = 0; i < num_options; i++) {
        std::string o = options[i] ? options[i] : "";
        if (o.rfind("-D", 0) == 0 || o.rfind("-U", 0) == 0 || o.rfind("-I", 0) == 0) user.push_back(o);
        else if (o.rfind("--define-macro=", 0) == 0) user.push_back("-D" + o.substr(15));
        else if (o.rfind("--include-path=", 0) == 0) user.push_back("-I" + o.substr(15));
        else if (o == "-G" || o == "--device-debug") debug = true;
    }
    Hash h;
    h.add("cudaemu-abi-1");
    h.add(cxx);
    h.add(header);
    for (auto& u : user) h.add(u);
    h.add(debug ? "debug" : "opt");
    for (auto& [n, t] : p.headers) { h.add(n); h.add(t); }
    h.add(p.source);
    std::string cache = cache_dir();
    mkdirs(cache);
    std::string so = cache + "/" + h.hex() + ".so";
    if (access(so.c_str(), R_OK) == 0) {
        p.log = "cudaemu: cache hit " + so + "\n";
        p.token = kTokenPrefix + so;
        return NVRTC_SUCCESS;
    }
    std::string work_tmpl = cache + "/tmp-XXXXXX";
    std::vector<char> wbuf(work_tmpl.begin(), work_tmpl.end());
    wbuf.push_back(0);
    if (!mkdtemp(wbuf.data())) { p.log = "cudaemu: cannot create a directory in " + cache + "\n"; return NVRTC_ERROR_INTERNAL_ERROR; }
    std::string work = wbuf.data();
    // The work directory goes away on every path, unless CUDAEMU_KEEP=1 keeps the generated unit.cpp.
    struct Cleanup {
        std::string dir;
        ~Cleanup() {
            if (env_long("CUDAEMU_KEEP", 0) != 0) return;
            nftw(dir.c_str(), [](const char* f, const struct stat*, int, FTW*) { return remove(f); }, 16, FTW_DEPTH | FTW_PHYS);
        }
    } cleanup{work};
    std::string src_name = p.name.empty() ? "kernel.cu" : p.name;
    for (char& c : src_name) if (c == '/') c = '_';
    mkdirs(work + "/include");
    for (auto& [n, t] : p.headers) {
        std::string hp = work + "/include/" + n;
        mkdirs(hp.substr(0, hp.rfind('/')));
        write_file(hp, t);
    }
    write_file(work + "/" + src_name, p.source);
    // 1. Preprocess (cudaemu.h forced in) to find every kernel, including macro-stamped ones.
    std::vector<std::string> pre_cmd = {cxx, "-std=c++20", "-E", "-x", "c++", "-include", header_path,
                                        "-D__CUDACC_RTC__", "-I", work + "/include"};
    pre_cmd.insert(pre_cmd.end(), user.begin(), user.end());
    pre_cmd.insert(pre_cmd.end(), {work + "/" + src_name, "-o", work + "/unit.ii"});
    int rc = run_process(pre_cmd, work + "/pre.log", p.log);
    std::string pre;
    if (rc != 0 || !read_file(work + "/unit.ii", pre)) return NVRTC_ERROR_COMPILATION;
    std::vector<std::string> names = find_kernels(pre);
    // 2. Compile the preprocessed text plus the launch thunks into a shared object that needs
    //    libcudaemu.so by SONAME (.NET loads us RTLD_LOCAL, so nothing else would resolve our symbols).
    write_file(work + "/unit.cpp", pre + thunks(names));
    std::vector<std::string> cc_cmd = {cxx, "-std=c++20", debug ? "-O0" : "-O2", "-g0", "-fPIC", "-shared",
                                       "-ffp-contract=off", "-fno-math-errno", "-x", "c++", work + "/unit.cpp",
                                       "-o", work + "/module.so", "-x", "none", dir + "/libcudaemu.so", "-Wl,-z,defs", "-lm"};
    if (cxx.find("g++") != std::string::npos) cc_cmd.push_back("-Wno-attributes");
    rc = run_process(cc_cmd, work + "/cc.log", p.log);
    if (rc != 0) return NVRTC_ERROR_COMPILATION;
    if (rename((work + "/module.so").c_str(), so.c_str()) != 0) {
        p.log += "cudaemu: cannot move the module into " + so + "\n";
        return NVRTC_ERROR_INTERNAL_ERROR;
    }
    p.log += "cudaemu: compiled " + std::to_string(names.size()) + " kernel(s) into " + so + "\n";
    p.token = kTokenPrefix + so;
    return NVRTC_SUCCESS;
}

const char* error_name(CUresult e) {
    switch (e) {
    case CUDA_SUCCESS: return "CUDA_SUCCESS";
    case CUDA_ERROR_INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
    case CUDA_ERROR_OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
    case CUDA_ERROR_NOT_INITIALIZED: return "CUDA_ERROR_NOT_INITIALIZED";
    case CUDA_ERROR_NO_DEVICE: return "CUDA_ERROR_NO_DEVICE";
    case CUDA_ERROR_INVALID_DEVICE: return "CUDA_ERROR_INVALID_DEVICE";
    case CUDA_ERROR_INVALID_IMAGE: return "CUDA_ERROR_INVALID_IMAGE";
    case CUDA_ERROR_INVALID_CONTEXT: return "CUDA_ERROR_INVALID_CONTEXT";
    case CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND: return "CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND";
    case CUDA_ERROR_INVALID_HANDLE: return "CUDA_ERROR_INVALID_HANDLE";
    case CUDA_ERROR_NOT_FOUND: return "CUDA_ERROR_NOT_FOUND";
    case CUDA_ERROR_NOT_READY: return "CUDA_ERROR_NOT_READY";
    case CUDA_ERROR_ILLEGAL_ADDRESS: return "CUDA_ERROR_ILLEGAL_ADDRESS";
    case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: return "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES";
    case CUDA_ERROR_LAUNCH_FAILED: return "CUDA_ERROR_LAUNCH_FAILED";
    case CUDA_ERROR_NOT_SUPPORTED: return "CUDA_ERROR_NOT_SUPPORTED";
    case CUDA_ERROR_UNKNOWN: return "CUDA_ERROR_UNKNOWN";
    default: return nullptr;
    }
}

const char* error_string(CUresult e) {
    switch (e) {
    case CUDA_SUCCESS: return "no error";
    case CUDA_ERROR_INVALID_VALUE: return "invalid argument";
    case CUDA_ERROR_OUT_OF_MEMORY: return "out of memory";
    case CUDA_ERROR_NOT_INITIALIZED: return "initialization error";
    case CUDA_ERROR_NO_DEVICE: return "no CUDA-capable device is detected";
    case CUDA_ERROR_INVALID_DEVICE: return "invalid device ordinal";
    case CUDA_ERROR_INVALID_IMAGE: return "device kernel image is invalid";
    case CUDA_ERROR_INVALID_CONTEXT: return "invalid device context";
    case CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND: return "shared object symbol not found";
    case CUDA_ERROR_INVALID_HANDLE: return "invalid resource handle";
    case CUDA_ERROR_NOT_FOUND: return "named symbol not found";
    case CUDA_ERROR_NOT_READY: return "device not ready";
    case CUDA_ERROR_ILLEGAL_ADDRESS: return "an illegal memory access was encountered";
    case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: return "too many resources requested for launch";
    case CUDA_ERROR_LAUNCH_FAILED: return "unspecified launch failure";
    case CUDA_ERROR_NOT_SUPPORTED: return "operation not supported";
    case CUDA_ERROR_UNKNOWN: return "unknown error";
    default: return nullptr;
    }
}

double now_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

CUresult copy(void* dst, const void* src, size_t n, bool dst_dev, bool src_dev, const char* what) {
    if (CUresult r = need_context()) return r;
    if (n == 0) return CUDA_SUCCESS;
    if (dst_dev && !valid_range((uintptr_t)dst, n))
        return fail(CUDA_ERROR_INVALID_VALUE, "%s: destination 0x%llx + %zu bytes is not inside one device allocation", what, (unsigned long long)(uintptr_t)dst, n);
    if (src_dev && !valid_range((uintptr_t)src, n))
        return fail(CUDA_ERROR_INVALID_VALUE, "%s: source 0x%llx + %zu bytes is not inside one device allocation", what, (unsigned long long)(uintptr_t)src, n);
    if (!dst || !src) return fail(CUDA_ERROR_INVALID_VALUE, "%s: null pointer", what);
    memmove(dst, src, n);
    return CUDA_SUCCESS;
}

} // namespace

// Kernels see this through threadIdx/blockIdx/blockDim/gridDim.
EXPORT const cudaemu_thread_ctx* cudaemu_ctx(void) { Worker* w = t_worker; return &w->fibers[w->cur].tc; }

// One buffer per worker OS thread, like the static __shared__ variables of the kernel modules.
// (braces: `extern "C" T x;` alone would only declare it)
extern "C" {
__attribute__((visibility("default"))) thread_local __attribute__((aligned(16))) unsigned char dyn_smem[kMaxDynSmem];
}

EXPORT void cudaemu_syncthreads(void) {
    Worker* w = t_worker;
    w->fibers[w->cur].state = AT_BARRIER;
    if (++w->at_barrier == w->n) {  // the last to arrive releases everyone and runs on
        for (int i = 0; i < w->n; i++) w->fibers[i].state = READY;
        w->at_barrier = 0;
        return;
    }
    yield(w);
}

EXPORT unsigned long long cudaemu_warp_op(int op, unsigned int mask, unsigned long long value, int arg, int width) {
    Worker* w = t_worker;
    int me = w->cur, warp = me / kWarp, base = warp * kWarp, lane = me % kWarp;
    int lanes = std::min(kWarp, w->n - base);
    unsigned exists = lanes == kWarp ? 0xffffffffu : ((1u << lanes) - 1);
    unsigned m = mask & exists;  // lanes past the end of a partial last warp do not exist
    if (!(m >> lane & 1))
        abort_block(w, CUDA_ERROR_LAUNCH_FAILED, where(w, me) + ": " + op_name(op) + " called with a mask that does not include the calling lane");
    if (width <= 0 || width > kWarp || (width & (width - 1)))
        abort_block(w, CUDA_ERROR_LAUNCH_FAILED, where(w, me) + ": " + op_name(op) + " width " + std::to_string(width) + " is not a power of two up to 32");
    Fiber& f = w->fibers[me];
    f.state = AT_WARP;
    f.op = op;
    f.mask = m;
    f.value = value;
    f.arg = arg;
    f.width = width;
    // Until as many lanes as the mask names have arrived nobody needs to look; then check them all
    // (lanes of one warp may wait in disjoint groups with different masks).
    int need = __builtin_popcount(m);
    if (++w->warp_arrived[warp] < need) { yield(w); return f.result; }
    for (int l = 0; l < kWarp; l++) {
        if (!(m >> l & 1)) continue;
        const Fiber& g = w->fibers[base + l];
        if (g.state != AT_WARP || g.op != op || g.mask != m) { yield(w); return f.result; }
    }
    w->warp_arrived[warp] -= need;
    // Everyone named in the mask is here: compute every lane's result, release them, run on.
    unsigned ballot = 0;
    for (int l = 0; l < kWarp; l++)
        if ((m >> l & 1) && w->fibers[base + l].value) ballot |= 1u << l;
    for (int l = 0; l < kWarp; l++) {
        if (!(m >> l & 1)) continue;
        Fiber& g = w->fibers[base + l];
        int seg = l & ~(g.width - 1), src = l;
        switch (op) {
        case CUDAEMU_SHFL: src = seg + (((g.arg % g.width) + g.width) % g.width); break;
        case CUDAEMU_SHFL_XOR: src = l ^ g.arg; break;
        case CUDAEMU_SHFL_DOWN: src = l + g.arg; break;
        case CUDAEMU_SHFL_UP: src = l - g.arg; break;
        default: break;
        }
        if (src < seg || src >= seg + g.width || !(m >> src & 1)) src = l;  // out of the segment: own value
        switch (op) {
        case CUDAEMU_SYNCWARP: g.result = 0; break;
        case CUDAEMU_BALLOT: g.result = ballot; break;
        case CUDAEMU_ANY: g.result = ballot != 0; break;
        case CUDAEMU_ALL: g.result = ballot == m; break;
        default: g.result = w->fibers[base + src].value; break;
        }
        g.state = READY;
    }
    return f.result;
}

EXPORT void cudaemu_trap(const char* what) {
    Worker* w = t_worker;
    abort_block(w, CUDA_ERROR_LAUNCH_FAILED, where(w, w->cur) + ": " + what);
}

// Extension: the detail of this thread's last failed call (block, thread, allocation, deadlock).
EXPORT const char* cudaemuGetLastErrorMessage(void) { return t_message; }

// ---- driver API ----------------------------------------------------------------------------------
EXPORT CUresult cuInit(unsigned int flags) {
    if (flags != 0) return fail(CUDA_ERROR_INVALID_VALUE, "cuInit: flags must be 0");
    static std::once_flag once;
    std::call_once(once, [] {
        g_device_count = (int)std::clamp(env_long("CUDAEMU_DEVICES", 4), 1L, 16L);
        for (int i = 0; i < 16; i++) g_contexts[i] = Context{i, 0};
        install_handlers();
        g_initialized = true;
    });
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDriverGetVersion(int* v) {
    if (!v) return fail(CUDA_ERROR_INVALID_VALUE, "cuDriverGetVersion: null");
    *v = 12080;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetCount(int* count) {
    if (!g_initialized) return fail(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    if (!count) return fail(CUDA_ERROR_INVALID_VALUE, "cuDeviceGetCount: null");
    *count = g_device_count;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGet(CUdevice* dev, int ordinal) {
    if (!g_initialized) return fail(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    if (!dev) return fail(CUDA_ERROR_INVALID_VALUE, "cuDeviceGet: null");
    if (ordinal < 0 || ordinal >= g_device_count) return fail(CUDA_ERROR_INVALID_DEVICE, "cuDeviceGet: no emulated device %d", ordinal);
    *dev = ordinal;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetName(char* name, int len, CUdevice dev) {
    if (!name || len <= 0) return fail(CUDA_ERROR_INVALID_VALUE, "cuDeviceGetName: null or empty buffer");
    if (dev < 0 || dev >= g_device_count) return fail(CUDA_ERROR_INVALID_DEVICE, "cuDeviceGetName: no emulated device %d", dev);
    snprintf(name, (size_t)len, "Sdp emulated CUDA device %d (cudaemu, sm_90)", dev);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice dev) {
    if (!bytes) return fail(CUDA_ERROR_INVALID_VALUE, "cuDeviceTotalMem: null");
    if (dev < 0 || dev >= g_device_count) return fail(CUDA_ERROR_INVALID_DEVICE, "no emulated device %d", dev);
    *bytes = device_total();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetAttribute(int* pi, int attrib, CUdevice dev) {
    if (!pi) return fail(CUDA_ERROR_INVALID_VALUE, "cuDeviceGetAttribute: null");
    if (dev < 0 || dev >= g_device_count) return fail(CUDA_ERROR_INVALID_DEVICE, "no emulated device %d", dev);
    switch (attrib) {
    case 1: *pi = kMaxThreads; break;                        // MAX_THREADS_PER_BLOCK
    case 2: case 3: *pi = 1024; break;                       // MAX_BLOCK_DIM_X, _Y
    case 4: *pi = 64; break;                                 // MAX_BLOCK_DIM_Z
    case 5: *pi = 2147483647; break;                         // MAX_GRID_DIM_X
    case 6: case 7: *pi = 65535; break;                      // MAX_GRID_DIM_Y, _Z
    case 8: *pi = (int)kDefaultDynSmem; break;               // MAX_SHARED_MEMORY_PER_BLOCK
    case 9: *pi = 65536; break;                              // TOTAL_CONSTANT_MEMORY
    case 10: *pi = kWarp; break;                             // WARP_SIZE
    case 12: *pi = 65536; break;                             // MAX_REGISTERS_PER_BLOCK
    case 16: *pi = (int)std::max(1u, std::thread::hardware_concurrency()); break;  // MULTIPROCESSOR_COUNT
    case 38: *pi = 50 << 20; break;                          // L2_CACHE_SIZE
    case 39: *pi = 2048; break;                              // MAX_THREADS_PER_MULTIPROCESSOR
    case 41: *pi = 1; break;                                 // UNIFIED_ADDRESSING
    case 75: *pi = 9; break;                                 // COMPUTE_CAPABILITY_MAJOR
    case 76: *pi = 0; break;                                 // COMPUTE_CAPABILITY_MINOR
    case 81: *pi = 233472; break;                            // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
    case 97: *pi = (int)kMaxDynSmem; break;                  // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
    default: return fail(CUDA_ERROR_INVALID_VALUE, "cuDeviceGetAttribute: attribute %d is not emulated", attrib);
    }
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDevicePrimaryCtxRetain(void** pctx, CUdevice dev) {
    if (!g_initialized) return fail(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    if (!pctx) return fail(CUDA_ERROR_INVALID_VALUE, "cuDevicePrimaryCtxRetain: null");
    if (dev < 0 || dev >= g_device_count) return fail(CUDA_ERROR_INVALID_DEVICE, "no emulated device %d", dev);
    g_contexts[dev].refs++;
    *pctx = &g_contexts[dev];
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    if (dev < 0 || dev >= g_device_count) return fail(CUDA_ERROR_INVALID_DEVICE, "no emulated device %d", dev);
    if (g_contexts[dev].refs > 0) g_contexts[dev].refs--;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxSetCurrent(void* ctx) {
    if (!g_initialized) return fail(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
    Context* c = (Context*)ctx;
    if (c && (c < g_contexts || c >= g_contexts + g_device_count)) return fail(CUDA_ERROR_INVALID_CONTEXT, "cuCtxSetCurrent: not a context");
    t_current = c;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxGetCurrent(void** pctx) {
    if (!pctx) return fail(CUDA_ERROR_INVALID_VALUE, "cuCtxGetCurrent: null");
    *pctx = t_current;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxSynchronize(void) { return need_context(); }

EXPORT CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    if (CUresult r = need_context()) return r;
    if (!free_bytes || !total) return fail(CUDA_ERROR_INVALID_VALUE, "cuMemGetInfo: null");
    std::lock_guard<std::mutex> lock(g_mem_mutex);
    *total = device_total();
    *free_bytes = *total - std::min(*total, g_used[t_current->device]);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr* dptr, size_t bytes) {
    if (CUresult r = need_context()) return r;
    if (!dptr || bytes == 0) return fail(CUDA_ERROR_INVALID_VALUE, "cuMemAlloc: null pointer or 0 bytes");
    size_t data = round_up(bytes, kPage);
    {
        std::lock_guard<std::mutex> lock(g_mem_mutex);
        if (g_used[t_current->device] + data > device_total())
            return fail(CUDA_ERROR_OUT_OF_MEMORY, "cuMemAlloc: %zu bytes requested on device %d, %zu of %zu in use (CUDAEMU_MEMORY_MB sets the size)",
                        bytes, t_current->device, g_used[t_current->device], device_total());
    }
    size_t len = data + 2 * kPage;
    char* map = (char*)mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (map == MAP_FAILED) return fail(CUDA_ERROR_OUT_OF_MEMORY, "cuMemAlloc: mmap of %zu bytes failed", len);
    mprotect(map + kPage, data, PROT_READ | PROT_WRITE);
    // The end of the buffer (rounded to 16 bytes) touches the upper guard page: one element past
    // the end faults at once. The < 16 bytes of slack hold canaries, checked after every launch.
    uintptr_t user = (uintptr_t)(map + kPage + data - round_up(bytes, kAlign));
    memset((void*)user, kPoison, bytes);
    memset((void*)(user + bytes), kCanary, round_up(bytes, kAlign) - bytes);
    std::lock_guard<std::mutex> lock(g_mem_mutex);
    g_allocs[user] = Alloc{user, bytes, map, len, t_current->device};
    g_used[t_current->device] += data;
    *dptr = user;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr) {
    if (CUresult r = need_context()) return r;
    if (dptr == 0) return CUDA_SUCCESS;
    Alloc a;
    {
        std::lock_guard<std::mutex> lock(g_mem_mutex);
        auto it = g_allocs.find((uintptr_t)dptr);
        if (it == g_allocs.end()) return fail(CUDA_ERROR_INVALID_VALUE, "cuMemFree: 0x%llx is not the start of a live allocation", dptr);
        a = it->second;
        g_allocs.erase(it);
        g_used[a.device] -= a.map_len - 2 * kPage;
    }
    munmap(a.map, a.map_len);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) { return copy((void*)dst, src, n, true, false, "cuMemcpyHtoD"); }
EXPORT CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) { return copy(dst, (const void*)src, n, false, true, "cuMemcpyDtoH"); }
EXPORT CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) { return copy((void*)dst, (const void*)src, n, true, true, "cuMemcpyDtoD"); }
EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, void*) { return copy((void*)dst, src, n, true, false, "cuMemcpyHtoDAsync"); }
EXPORT CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, void*) { return copy(dst, (const void*)src, n, false, true, "cuMemcpyDtoHAsync"); }
EXPORT CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void*) { return copy((void*)dst, (const void*)src, n, true, true, "cuMemcpyDtoDAsync"); }

EXPORT CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
    if (CUresult r = need_context()) return r;
    if (n && !valid_range(dst, n)) return fail(CUDA_ERROR_INVALID_VALUE, "cuMemsetD8: 0x%llx + %zu bytes is not inside one device allocation", dst, n);
    memset((void*)dst, v, n);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemsetD32_v2(CUdeviceptr dst, unsigned int v, size_t n) {
    if (CUresult r = need_context()) return r;
    if (dst % 4) return fail(CUDA_ERROR_INVALID_VALUE, "cuMemsetD32: 0x%llx is not 4-byte aligned", dst);
    if (n && !valid_range(dst, n * 4)) return fail(CUDA_ERROR_INVALID_VALUE, "cuMemsetD32: 0x%llx + %zu words is not inside one device allocation", dst, n);
    unsigned int* p = (unsigned int*)dst;
    for (size_t i = 0; i < n; i++) p[i] = v;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, void*) { return cuMemsetD8_v2(dst, v, n); }
EXPORT CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned int v, size_t n, void*) { return cuMemsetD32_v2(dst, v, n); }

EXPORT CUresult cuStreamCreate(void** ph, unsigned int flags) {
    if (CUresult r = need_context()) return r;
    if (!ph || flags > 1) return fail(CUDA_ERROR_INVALID_VALUE, "cuStreamCreate: null or unknown flags %u", flags);
    *ph = new Stream();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamDestroy_v2(void* h) {
    Stream* s = (Stream*)h;
    if (!s || s->magic != 0x5752u) return fail(CUDA_ERROR_INVALID_HANDLE, "cuStreamDestroy: not a stream");
    s->magic = 0;
    delete s;
    return CUDA_SUCCESS;
}

// Launches and copies complete before they return, so a stream has never anything pending.
EXPORT CUresult cuStreamSynchronize(void* h) {
    if (CUresult r = need_context()) return r;
    if (h && ((Stream*)h)->magic != 0x5752u) return fail(CUDA_ERROR_INVALID_HANDLE, "cuStreamSynchronize: not a stream");
    return CUDA_SUCCESS;
}

EXPORT CUresult cuEventCreate(void** ph, unsigned int) {
    if (CUresult r = need_context()) return r;
    if (!ph) return fail(CUDA_ERROR_INVALID_VALUE, "cuEventCreate: null");
    *ph = new Event();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuEventRecord(void* h, void*) {
    Event* e = (Event*)h;
    if (!e || e->magic != 0xE7E7u) return fail(CUDA_ERROR_INVALID_HANDLE, "cuEventRecord: not an event");
    e->recorded = true;
    e->ms = now_ms();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuEventSynchronize(void* h) {
    Event* e = (Event*)h;
    if (!e || e->magic != 0xE7E7u) return fail(CUDA_ERROR_INVALID_HANDLE, "cuEventSynchronize: not an event");
    return CUDA_SUCCESS;
}

EXPORT CUresult cuEventElapsedTime(float* ms, void* start, void* end) {
    Event* a = (Event*)start;
    Event* b = (Event*)end;
    if (!ms) return fail(CUDA_ERROR_INVALID_VALUE, "cuEventElapsedTime: null");
    if (!a || !b || a->magic != 0xE7E7u || b->magic != 0xE7E7u) return fail(CUDA_ERROR_INVALID_HANDLE, "cuEventElapsedTime: not an event");
    if (!a->recorded || !b->recorded) return fail(CUDA_ERROR_INVALID_HANDLE, "cuEventElapsedTime: an event was never recorded");
    *ms = (float)(b->ms - a->ms);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuEventDestroy_v2(void* h) {
    Event* e = (Event*)h;
    if (!e || e->magic != 0xE7E7u) return fail(CUDA_ERROR_INVALID_HANDLE, "cuEventDestroy: not an event");
    e->magic = 0;
    delete e;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuModuleLoadData(void** pmod, const void* image) {
    if (CUresult r = need_context()) return r;
    if (!pmod || !image) return fail(CUDA_ERROR_INVALID_VALUE, "cuModuleLoadData: null");
    const char* text = (const char*)image;
    size_t plen = strlen(kTokenPrefix);
    if (strncmp(text, kTokenPrefix, plen) != 0)
        return fail(CUDA_ERROR_INVALID_IMAGE, "cuModuleLoadData: the emulated device loads only what its own nvrtcCompileProgram produced, not PTX or cubin");
    std::string path(text + plen);
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) return fail(CUDA_ERROR_INVALID_IMAGE, "cuModuleLoadData: %s", dlerror());
    auto* table = (const cudaemu_kernel_entry*)dlsym(h, "cudaemu_kernels");
    if (!table) { dlclose(h); return fail(CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND, "cuModuleLoadData: %s has no kernel table", path.c_str()); }
    auto* m = new Module{h, path, {}, 0, 0, nullptr};
    for (const cudaemu_kernel_entry* e = table; e->name; e++) m->functions.push_back(std::make_unique<Function>(Function{m, e, kDefaultDynSmem}));
    m->tls_touch = (void* (*)())dlsym(h, "cudaemu_tls_touch");
    if (dlinfo(h, RTLD_DI_TLS_MODID, &m->tls_modid) == 0 && m->tls_modid) {
        dl_iterate_phdr([](dl_phdr_info* info, size_t, void* data) -> int {
            Module* mod = (Module*)data;
            if (info->dlpi_tls_modid != mod->tls_modid) return 0;
            for (int i = 0; i < info->dlpi_phnum; i++)
                if (info->dlpi_phdr[i].p_type == PT_TLS) mod->tls_size = info->dlpi_phdr[i].p_memsz;
            return 1;
        }, m);
    }
    *pmod = m;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuModuleGetFunction(void** pfn, void* hmod, const char* name) {
    if (CUresult r = need_context()) return r;
    Module* m = (Module*)hmod;
    if (!pfn || !m || !name) return fail(CUDA_ERROR_INVALID_VALUE, "cuModuleGetFunction: null");
    std::string names;
    for (auto& f : m->functions) {
        if (strcmp(f->entry->name, name) == 0) { *pfn = f.get(); return CUDA_SUCCESS; }
        names += names.empty() ? "" : ", ";
        names += f->entry->name;
    }
    return fail(CUDA_ERROR_NOT_FOUND, "cuModuleGetFunction: no kernel '%s' in the module (it has: %s); is it extern \"C\" __global__?", name, names.c_str());
}

EXPORT CUresult cuModuleUnload(void* hmod) {
    Module* m = (Module*)hmod;
    if (!m) return fail(CUDA_ERROR_INVALID_HANDLE, "cuModuleUnload: null");
    dlclose(m->handle);
    delete m;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuFuncSetAttribute(void* hfn, int attrib, int value) {
    Function* f = (Function*)hfn;
    if (!f) return fail(CUDA_ERROR_INVALID_HANDLE, "cuFuncSetAttribute: null function");
    if (attrib == 8) {  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        if (value < 0 || (unsigned)value > kMaxDynSmem) return fail(CUDA_ERROR_INVALID_VALUE, "cuFuncSetAttribute: %d bytes of dynamic shared memory exceed the %u available", value, kMaxDynSmem);
        f->max_dyn_smem = (unsigned)value;
        return CUDA_SUCCESS;
    }
    if (attrib == 9) return CUDA_SUCCESS;  // PREFERRED_SHARED_MEMORY_CARVEOUT: no meaning here
    return fail(CUDA_ERROR_INVALID_VALUE, "cuFuncSetAttribute: attribute %d is not settable on the emulated device", attrib);
}

EXPORT CUresult cuLaunchKernel(void* hfn, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by,
                               unsigned int bz, unsigned int smem, void* stream, void** params, void** extra) {
    (void)stream;
    if (CUresult r = need_context()) return r;
    Function* f = (Function*)hfn;
    if (!f) return fail(CUDA_ERROR_INVALID_HANDLE, "cuLaunchKernel: null function");
    const char* name = f->entry->name;
    unsigned long long threads = (unsigned long long)bx * by * bz;
    if (!gx || !gy || !gz || !bx || !by || !bz || gy > 65535 || gz > 65535 || bx > 1024 || by > 1024 || bz > 64 || threads > kMaxThreads)
        return fail(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel '%s': grid (%u,%u,%u) block (%u,%u,%u) is outside the device limits", name, gx, gy, gz, bx, by, bz);
    if (smem > f->max_dyn_smem)
        return fail(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel '%s': %u bytes of dynamic shared memory exceed the %u allowed (above 48 KiB opt in with cuFuncSetAttribute(f, 8, bytes))",
                    name, smem, f->max_dyn_smem);
    if (extra) return fail(CUDA_ERROR_NOT_SUPPORTED, "cuLaunchKernel '%s': the extra (packed buffer) form is not emulated; pass kernelParams", name);
    if (f->entry->nparams && !params) return fail(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel '%s': kernelParams is null but the kernel takes %u parameters", name, f->entry->nparams);
    for (unsigned i = 0; i < f->entry->nparams; i++) {
        if (!params[i]) return fail(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel '%s': kernelParams[%u] is null", name, i);
        if (!f->entry->pointers[i]) continue;
        uintptr_t p;
        memcpy(&p, params[i], sizeof p);
        if (p && !valid_range(p, 0))
            return fail(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel '%s': pointer parameter %u is 0x%llx, which is not device memory (a host pointer?)",
                        name, i, (unsigned long long)p);
    }
    Launch L;
    L.fn = f;
    L.grid = dim3(gx, gy, gz);
    L.block = dim3(bx, by, bz);
    L.smem = smem;
    L.params = params;
    L.total_blocks = (unsigned long long)gx * gy * gz;
    return run_grid(L);
}

EXPORT CUresult cuGetErrorName(CUresult e, const char** p) {
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    *p = error_name(e);
    return *p ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

EXPORT CUresult cuGetErrorString(CUresult e, const char** p) {
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    *p = error_string(e);
    return *p ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

// ---- NVRTC ---------------------------------------------------------------------------------------
EXPORT nvrtcResult nvrtcVersion(int* major, int* minor) {
    if (!major || !minor) return NVRTC_ERROR_INVALID_INPUT;
    *major = 12;
    *minor = 8;
    return NVRTC_SUCCESS;
}

EXPORT nvrtcResult nvrtcGetNumSupportedArchs(int* n) {
    if (!n) return NVRTC_ERROR_INVALID_INPUT;
    *n = 1;
    return NVRTC_SUCCESS;
}

EXPORT nvrtcResult nvrtcGetSupportedArchs(int* archs) {
    if (!archs) return NVRTC_ERROR_INVALID_INPUT;
    archs[0] = 90;
    return NVRTC_SUCCESS;
}

EXPORT nvrtcResult nvrtcCreateProgram(void** prog, const char* src, const char* name, int num_headers, const char* const* headers,
                                      const char* const* include_names) {
    if (!prog || !src || num_headers < 0 || (num_headers > 0 && (!headers || !include_names))) return NVRTC_ERROR_INVALID_INPUT;
    auto* p = new Program();
    p->source = src;
    p->name = name ? name : "";
    for (int i = 0; i < num_headers; i++) p->headers.push_back({include_names[i] ? include_names[i] : "", headers[i] ? headers[i] : ""});
    *prog = p;
    return NVRTC_SUCCESS;
}

EXPORT nvrtcResult nvrtcDestroyProgram(void** prog) {
    if (!prog || !*prog) return NVRTC_ERROR_INVALID_PROGRAM;
    delete (Program*)*prog;
    *prog = nullptr;
    return NVRTC_SUCCESS;
}

EXPORT nvrtcResult nvrtcCompileProgram(void* prog, int num_options, const char* const* options) {
    if (!prog) return NVRTC_ERROR_INVALID_PROGRAM;
    if (num_options < 0 || (num_options > 0 && !options)) return NVRTC_ERROR_INVALID_INPUT;
    return compile(*(Program*)prog, num_options, options);
}

EXPORT nvrtcResult nvrtcGetPTXSize(void* prog, size_t* size) {
    if (!prog) return NVRTC_ERROR_INVALID_PROGRAM;
    if (!size) return NVRTC_ERROR_INVALID_INPUT;
    *size = ((Program*)prog)->token.size() + 1;
    return NVRTC_SUCCESS;
}

EXPORT nvrtcResult nvrtcGetPTX(void* prog, char* ptx) {
    if (!prog) return NVRTC_ERROR_INVALID_PROGRAM;
    if (!ptx) return NVRTC_ERROR_INVALID_INPUT;
    const std::string& t = ((Program*)prog)->token;
    memcpy(ptx, t.c_str(), t.size() + 1);
    return NVRTC_SUCCESS;
}

EXPORT nvrtcResult nvrtcGetCUBINSize(void* prog, size_t* size) { return nvrtcGetPTXSize(prog, size); }
EXPORT nvrtcResult nvrtcGetCUBIN(void* prog, char* cubin) { return nvrtcGetPTX(prog, cubin); }

EXPORT nvrtcResult nvrtcGetProgramLogSize(void* prog, size_t* size) {
    if (!prog) return NVRTC_ERROR_INVALID_PROGRAM;
    if (!size) return NVRTC_ERROR_INVALID_INPUT;
    *size = ((Program*)prog)->log.size() + 1;
    return NVRTC_SUCCESS;
}

EXPORT nvrtcResult nvrtcGetProgramLog(void* prog, char* log) {
    if (!prog) return NVRTC_ERROR_INVALID_PROGRAM;
    if (!log) return NVRTC_ERROR_INVALID_INPUT;
    const std::string& l = ((Program*)prog)->log;
    memcpy(log, l.c_str(), l.size() + 1);
    return NVRTC_SUCCESS;
}

EXPORT const char* nvrtcGetErrorString(nvrtcResult r) {
    switch (r) {
    case NVRTC_SUCCESS: return "NVRTC_SUCCESS";
    case NVRTC_ERROR_OUT_OF_MEMORY: return "NVRTC_ERROR_OUT_OF_MEMORY";
    case NVRTC_ERROR_PROGRAM_CREATION_FAILURE: return "NVRTC_ERROR_PROGRAM_CREATION_FAILURE";
    case NVRTC_ERROR_INVALID_INPUT: return "NVRTC_ERROR_INVALID_INPUT";
    case NVRTC_ERROR_INVALID_PROGRAM: return "NVRTC_ERROR_INVALID_PROGRAM";
    case NVRTC_ERROR_INVALID_OPTION: return "NVRTC_ERROR_INVALID_OPTION";
    case NVRTC_ERROR_COMPILATION: return "NVRTC_ERROR_COMPILATION";
    case NVRTC_ERROR_INTERNAL_ERROR: return "NVRTC_ERROR_INTERNAL_ERROR";
    default: return "NVRTC_ERROR unknown";
    }
}

// =================================================================================================
// cuBLAS subset (cublas_api.h, v2 API): column-major, a blocked multi-threaded GEMM accumulating in double
// in k order (the GEMM engine below), pointer mode host (alpha and beta are host pointers). Argument checks
// return the real status codes; operands outside device memory of the handle's device are
// CUBLAS_STATUS_EXECUTION_FAILED with a message (on a GPU that would be an illegal address).
// =================================================================================================
typedef int cublasStatus_t;
enum : int {
    CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_NOT_INITIALIZED = 1, CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7, CUBLAS_STATUS_ARCH_MISMATCH = 8, CUBLAS_STATUS_MAPPING_ERROR = 11,
    CUBLAS_STATUS_EXECUTION_FAILED = 13, CUBLAS_STATUS_INTERNAL_ERROR = 14, CUBLAS_STATUS_NOT_SUPPORTED = 15,
    CUBLAS_STATUS_LICENSE_ERROR = 16,
};
enum : int { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 };
enum : int { CUBLAS_DEFAULT_MATH = 0, CUBLAS_TENSOR_OP_MATH = 1, CUBLAS_PEDANTIC_MATH = 2, CUBLAS_TF32_TENSOR_OP_MATH = 3,
             CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION = 16 };
enum : int { CUDA_R_32F = 0 };
enum : int { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_PEDANTIC = 69, CUBLAS_COMPUTE_32F_FAST_TF32 = 77 };

namespace {

struct CublasHandle { unsigned magic = 0xB1A5u; int device = 0; void* stream = nullptr; int math = CUBLAS_DEFAULT_MATH; };
std::mutex g_blas_mutex;
std::set<CublasHandle*> g_blas_handles;

cublasStatus_t blas_fail(cublasStatus_t code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
cublasStatus_t blas_fail(cublasStatus_t code, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t_message, sizeof t_message, fmt, ap);
    va_end(ap);
    return code;
}

CublasHandle* blas_handle(void* h) {
    std::lock_guard<std::mutex> lock(g_blas_mutex);
    auto* p = (CublasHandle*)h;
    return g_blas_handles.count(p) ? p : nullptr;
}

// Rounds a float to TF32 (10 explicit mantissa bits), to nearest even, as the tensor cores read it.
float to_tf32(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return x;  // inf, NaN
    u += 0x0fffu + ((u >> 13) & 1u);
    u &= 0xffffe000u;
    memcpy(&x, &u, 4);
    return x;
}

// Bytes spanned by a column-major rows x cols matrix of T with leading dimension ld.
template <class T>
size_t span_bytes(int rows, int cols, int ld) {
    if (rows == 0 || cols == 0) return 0;
    return ((size_t)ld * (size_t)(cols - 1) + (size_t)rows) * sizeof(T);
}

cublasStatus_t check_operand(const CublasHandle* h, const char* what, const char* name, const void* p, size_t bytes) {
    if (bytes == 0) return CUBLAS_STATUS_SUCCESS;
    std::lock_guard<std::mutex> lock(g_mem_mutex);
    const Alloc* a = find_alloc((uintptr_t)p, bytes);
    if (!a)
        return blas_fail(CUBLAS_STATUS_EXECUTION_FAILED, "%s: %s = %p + %zu bytes is not inside one device allocation", what, name, p, bytes);
    if (a->device != h->device)
        return blas_fail(CUBLAS_STATUS_EXECUTION_FAILED, "%s: %s = %p is memory of device %d, but the handle belongs to device %d",
                         what, name, p, a->device, h->device);
    return CUBLAS_STATUS_SUCCESS;
}

// The common argument checks of the GEMM family, in cuBLAS's order; then the operand extents.
cublasStatus_t gemm_checks(const char* what, void* handle, int ta, int tb, int m, int n, int k, const void* alpha, int lda, int ldb,
                           const void* beta, int ldc, CublasHandle** out) {
    CublasHandle* h = blas_handle(handle);
    if (!h) return blas_fail(CUBLAS_STATUS_NOT_INITIALIZED, "%s: the handle was not made by cublasCreate (or was destroyed)", what);
    if (ta < CUBLAS_OP_N || ta > CUBLAS_OP_C) return blas_fail(CUBLAS_STATUS_INVALID_VALUE, "%s: transa = %d is not a cublasOperation_t", what, ta);
    if (tb < CUBLAS_OP_N || tb > CUBLAS_OP_C) return blas_fail(CUBLAS_STATUS_INVALID_VALUE, "%s: transb = %d is not a cublasOperation_t", what, tb);
    if (m < 0 || n < 0 || k < 0) return blas_fail(CUBLAS_STATUS_INVALID_VALUE, "%s: m = %d, n = %d, k = %d (negative)", what, m, n, k);
    int a_rows = ta == CUBLAS_OP_N ? m : k, b_rows = tb == CUBLAS_OP_N ? k : n;
    if (lda < std::max(1, a_rows)) return blas_fail(CUBLAS_STATUS_INVALID_VALUE, "%s: lda = %d < max(1, %d)", what, lda, a_rows);
    if (ldb < std::max(1, b_rows)) return blas_fail(CUBLAS_STATUS_INVALID_VALUE, "%s: ldb = %d < max(1, %d)", what, ldb, b_rows);
    if (ldc < std::max(1, m)) return blas_fail(CUBLAS_STATUS_INVALID_VALUE, "%s: ldc = %d < max(1, %d)", what, ldc, m);
    if (!alpha || !beta) return blas_fail(CUBLAS_STATUS_INVALID_VALUE, "%s: alpha or beta is null", what);
    *out = h;
    return CUBLAS_STATUS_SUCCESS;
}

// ---- the GEMM engine -----------------------------------------------------------------------------
// C = alpha op(A) op(B) + beta C, blocked and threaded; what each C element gets depends neither on the
// blocking nor on the number of threads:
//   accumulation  every C element is one accumulator that adds op(A)(i,l)·op(B)(l,j) for l = 0, 1, ..., k-1 in
//                 that order, in double, for float operands too (Sgemm, SgemmStridedBatched, GemmEx, TF32
//                 included); only then is v = alpha·acc (+ beta·c) formed in double and rounded once to T. A
//                 float·float product is exact in double, so fused and unfused multiply-adds give the same
//                 bits: float GEMMs are bit-identical on every CPU, with any thread count, and to the plain
//                 k-increasing double loop this engine replaced. Dgemm fuses each multiply-add on an AVX2+FMA
//                 CPU (one rounding, as cuBLAS) and rounds the product first in the baseline kernel.
//                 Why double for float operands: a float-accumulating AVX2 kernel (16 x 6) measured ~1.5x the
//                 GFLOP/s of this one (one Zen 3 core, 512³ and 1024³: 48-66 against 38-44), but GEMMs are now
//                 under a tenth of a training step on the emulated device, and float sums would cost up to
//                 k·2⁻²⁴ relative error and differ between the FMA and the baseline kernel.
//   packing       op(A) goes into MR-row panels (MR values per l, zero rows past m), op(B) into NR-column
//                 panels (NR values per l, zero columns past n), converted to double and TF32-rounded first
//                 when that mode is on. Zero padding keeps the micro-kernel full size; padded lanes are never
//                 stored. alpha == 0 (or k == 0) packs nothing: A and B are not read.
//   blocking      a task is one MC x NC tile of one batch item's C: per KC slice of k it packs its part of op(A)
//                 and op(B) and runs the MR x NR micro-kernel over the tile, whose accumulators stay in a
//                 per-thread buffer between slices (stored and reloaded exactly); then the epilogue writes the
//                 tile, reading C only when beta != 0. Each C element belongs to exactly one task. Batch items
//                 whose C matrices share elements (stride 0, say) run one after another, in batch order.
//   threads       tasks are taken from a counter by the calling thread and CUDAEMU_BLAS_THREADS - 1 helpers
//                 (default: hardware_concurrency); GEMMs under 2^19 multiply-adds, and a call that finds the
//                 helpers busy with another GEMM, run on the calling thread alone.
//   kernels       AVX2+FMA (8 x 6 doubles) where the CPU has it, picked at run time (the library is built
//                 without -march); else the baseline 128-bit kernel (4 x 6), which CUDAEMU_BLAS_SIMD=sse2 also
//                 forces. On one Zen 3 core at 512³-1024³ the AVX2 kernel ran ~2.5x the baseline one (~40 against
//                 ~15 GFLOP/s; the double loops this replaced: ~1.3).

// Micro-kernel contract: acc (MR x NR, column-major, leading dimension ld) = (first ? 0 : acc) + sum over
// l < kc of a[l*MR + r] * b[l*NR + c], l increasing, one accumulator per element.
#define CUDAEMU_GEMM_COLS(X) X(0) X(1) X(2) X(3) X(4) X(5)

#if defined(__x86_64__)
// AVX2 + FMA, compiled for that target whatever the build flags; used only where the CPU reports both.
struct GemmAvx2 {
    static constexpr int MR = 8, NR = 6;
    __attribute__((target("avx2,fma"))) static void micro(int kc, const double* a, const double* b, double* acc, int ld, bool first) {
#define CUDAEMU_DECL(j) __m256d c##j##0, c##j##1;
        CUDAEMU_GEMM_COLS(CUDAEMU_DECL)
#undef CUDAEMU_DECL
        if (first) {
#define CUDAEMU_ZERO(j) c##j##0 = _mm256_setzero_pd(); c##j##1 = _mm256_setzero_pd();
            CUDAEMU_GEMM_COLS(CUDAEMU_ZERO)
#undef CUDAEMU_ZERO
        } else {
#define CUDAEMU_LOAD(j) c##j##0 = _mm256_loadu_pd(acc + j * ld); c##j##1 = _mm256_loadu_pd(acc + j * ld + 4);
            CUDAEMU_GEMM_COLS(CUDAEMU_LOAD)
#undef CUDAEMU_LOAD
        }
        for (int l = 0; l < kc; l++, a += MR, b += NR) {
            __m256d a0 = _mm256_loadu_pd(a), a1 = _mm256_loadu_pd(a + 4);
#define CUDAEMU_STEP(j) { __m256d bj = _mm256_broadcast_sd(b + j); c##j##0 = _mm256_fmadd_pd(a0, bj, c##j##0); \
                          c##j##1 = _mm256_fmadd_pd(a1, bj, c##j##1); }
            CUDAEMU_GEMM_COLS(CUDAEMU_STEP)
#undef CUDAEMU_STEP
        }
#define CUDAEMU_STORE(j) _mm256_storeu_pd(acc + j * ld, c##j##0); _mm256_storeu_pd(acc + j * ld + 4, c##j##1);
        CUDAEMU_GEMM_COLS(CUDAEMU_STORE)
#undef CUDAEMU_STORE
    }
};

#endif

// The baseline kernel: generic 128-bit vectors (SSE2 on x86-64, which has no FMA: each product is rounded, then added).
struct GemmBase {
    static constexpr int MR = 4, NR = 6;
    typedef double v2d __attribute__((vector_size(16)));
    static void micro(int kc, const double* a, const double* b, double* acc, int ld, bool first) {
#define CUDAEMU_DECL(j) v2d c##j##0, c##j##1;
        CUDAEMU_GEMM_COLS(CUDAEMU_DECL)
#undef CUDAEMU_DECL
        if (first) {
#define CUDAEMU_ZERO(j) c##j##0 = v2d{0, 0}; c##j##1 = v2d{0, 0};
            CUDAEMU_GEMM_COLS(CUDAEMU_ZERO)
#undef CUDAEMU_ZERO
        } else {
#define CUDAEMU_LOAD(j) memcpy(&c##j##0, acc + j * ld, 16); memcpy(&c##j##1, acc + j * ld + 2, 16);
            CUDAEMU_GEMM_COLS(CUDAEMU_LOAD)
#undef CUDAEMU_LOAD
        }
        for (int l = 0; l < kc; l++, a += MR, b += NR) {
            v2d a0, a1;
            memcpy(&a0, a, 16);
            memcpy(&a1, a + 2, 16);
#define CUDAEMU_STEP(j) { v2d bj = v2d{b[j], b[j]}; v2d p0 = a0 * bj, p1 = a1 * bj; c##j##0 += p0; c##j##1 += p1; }
            CUDAEMU_GEMM_COLS(CUDAEMU_STEP)
#undef CUDAEMU_STEP
        }
#define CUDAEMU_STORE(j) memcpy(acc + j * ld, &c##j##0, 16); memcpy(acc + j * ld + 2, &c##j##1, 16);
        CUDAEMU_GEMM_COLS(CUDAEMU_STORE)
#undef CUDAEMU_STORE
    }
};
#undef CUDAEMU_GEMM_COLS

// Blocking (in elements): KC of k per packed slice; a task's tile is at most kMC x kNC of C.
constexpr int kKC = 256, kMC = 96, kNC = 192;

// One GEMM over batch items [0, items) whose C matrices do not share elements.
template <class T>
struct GemmJob {
    int ta, tb, m, n, k;
    T alpha, beta;
    const T* A; int lda; long long sA;
    const T* B; int ldb; long long sB;
    T* C; int ldc; long long sC;
    bool tf32;
    int mc, nc, tiles_m, tiles_n;  // the tile size actually used (multiples of MR and NR) and the tile grid
    long long tasks;
    std::atomic<long long> next{0};
};

// Per-thread buffers: the packed A and B slices and the tile's accumulators.
struct GemmBuffers {
    std::vector<double> a, b, acc;
};
thread_local GemmBuffers t_gemm;

template <class T>
inline double gemm_load(const T* p, bool tf32) {
    if constexpr (sizeof(T) == sizeof(float)) {
        if (tf32) return (double)to_tf32(*p);
    }
    (void)tf32;
    return (double)*p;
}

// Packs the R x kc slice of a panel of a matrix op(X) (rows [r0, r0+R) of its l0..l0+kc-1 columns as they come
// out of op) into dst[l*R + r]; rows past `rows` are zero. `along` says whether a row's k values lie contiguously
// (stride 1, rows ld apart) or a column's do (k values ld apart, rows adjacent).
template <int R, class T>
void gemm_pack_panel(const T* X, int ld, bool along, int r0, int rows, int l0, int kc, bool tf32, double* dst) {
    int live = std::min(R, rows - r0);
    if (along && live == R) {
        const T* src[R];
        for (int r = 0; r < R; r++) src[r] = X + (size_t)(r0 + r) * ld + l0;
        for (int l = 0; l < kc; l++)
            for (int r = 0; r < R; r++) dst[(size_t)l * R + r] = gemm_load(src[r] + l, tf32);
    } else if (along) {
        for (int r = 0; r < R; r++) {
            double* d = dst + r;
            if (r < live) {
                const T* src = X + (size_t)(r0 + r) * ld + l0;
                for (int l = 0; l < kc; l++) d[(size_t)l * R] = gemm_load(src + l, tf32);
            } else {
                for (int l = 0; l < kc; l++) d[(size_t)l * R] = 0.0;
            }
        }
    } else if (live == R) {
        for (int l = 0; l < kc; l++) {
            const T* src = X + (size_t)(l0 + l) * ld + r0;
            for (int r = 0; r < R; r++) dst[(size_t)l * R + r] = gemm_load(src + r, tf32);
        }
    } else {
        for (int l = 0; l < kc; l++) {
            const T* src = X + (size_t)(l0 + l) * ld + r0;
            for (int r = 0; r < R; r++) dst[(size_t)l * R + r] = r < live ? gemm_load(src + r, tf32) : 0.0;
        }
    }
}

// One task: the tile (ti, tj) of batch item `item`.
template <class T, class K>
void gemm_task(GemmJob<T>& g, long long task) {
    constexpr int MR = K::MR, NR = K::NR;
    long long per_item = (long long)g.tiles_m * g.tiles_n;
    int item = (int)(task / per_item), rest = (int)(task % per_item);
    int i0 = rest / g.tiles_n * g.mc, j0 = rest % g.tiles_n * g.nc;
    int mc = std::min(g.mc, g.m - i0), nc = std::min(g.nc, g.n - j0);
    int mp = (mc + MR - 1) / MR * MR, np = (nc + NR - 1) / NR * NR;
    T* C = g.C + g.sC * item;
    GemmBuffers& buf = t_gemm;
    bool products = g.alpha != (T)0 && g.k > 0;  // alpha == 0 reads neither A nor B
    int ld = mp;
    const double* accs = nullptr;
    if (products) {
        const T* A = g.A + g.sA * item;
        const T* B = g.B + g.sB * item;
        int kcap = std::min(g.k, kKC);
        if (buf.a.size() < (size_t)mp * kcap) buf.a.resize((size_t)mp * kcap);
        if (buf.b.size() < (size_t)np * kcap) buf.b.resize((size_t)np * kcap);
        if (buf.acc.size() < (size_t)mp * np) buf.acc.resize((size_t)mp * np);
        for (int l0 = 0; l0 < g.k; l0 += kKC) {
            int kc = std::min(kKC, g.k - l0);
            // op(A) rows are A's columns unless transposed; op(B) columns are B's columns unless transposed.
            for (int p = 0; p < mp / MR; p++)
                gemm_pack_panel<MR>(A, g.lda, g.ta != CUBLAS_OP_N, i0 + p * MR, i0 + mc, l0, kc, g.tf32, buf.a.data() + (size_t)p * MR * kc);
            for (int q = 0; q < np / NR; q++)
                gemm_pack_panel<NR>(B, g.ldb, g.tb == CUBLAS_OP_N, j0 + q * NR, j0 + nc, l0, kc, g.tf32, buf.b.data() + (size_t)q * NR * kc);
            for (int q = 0; q < np / NR; q++)
                for (int p = 0; p < mp / MR; p++)
                    K::micro(kc, buf.a.data() + (size_t)p * MR * kc, buf.b.data() + (size_t)q * NR * kc,
                             buf.acc.data() + (size_t)q * NR * ld + p * MR, ld, l0 == 0);
        }
        accs = buf.acc.data();
    }
    // Epilogue, as the reference loop wrote it: v = alpha·acc (+ beta·c only when beta != 0, so C is not read).
    double alpha = (double)g.alpha, beta = (double)g.beta;
    for (int j = 0; j < nc; j++) {
        T* c = C + (size_t)(j0 + j) * g.ldc + i0;
        const double* acc = accs ? accs + (size_t)j * ld : nullptr;
        for (int i = 0; i < mc; i++) {
            double v = alpha * (acc ? acc[i] : 0.0);
            if (g.beta != (T)0) v += beta * (double)c[i];
            c[i] = (T)v;
        }
    }
}

template <class T, class K>
void gemm_worker(void* job) {
    auto& g = *(GemmJob<T>*)job;
    for (long long t; (t = g.next.fetch_add(1, std::memory_order_relaxed)) < g.tasks;) gemm_task<T, K>(g, t);
}

// The helpers: started on first use, CUDAEMU_BLAS_THREADS - 1 of them (default hardware_concurrency - 1).
struct BlasPool {
    std::mutex busy;  // held by the one call using the helpers
    std::mutex m;
    std::condition_variable wake, done;
    unsigned long long generation = 0;
    int running = 0;
    void (*fn)(void*) = nullptr;
    void* job = nullptr;
    int helpers = 0;
};
BlasPool* g_blas_pool = nullptr;
std::once_flag g_blas_pool_once;

int blas_threads() {
    static const int n = (int)std::clamp(env_long("CUDAEMU_BLAS_THREADS", (long)std::max(1u, std::thread::hardware_concurrency())), 1L, 256L);
    return n;
}

void blas_helper_main() {
    unsigned long long seen = 0;
    for (;;) {
        void (*fn)(void*);
        void* job;
        {
            std::unique_lock<std::mutex> lock(g_blas_pool->m);
            g_blas_pool->wake.wait(lock, [&] { return g_blas_pool->generation != seen; });
            seen = g_blas_pool->generation;
            fn = g_blas_pool->fn;
            job = g_blas_pool->job;
        }
        fn(job);
        std::lock_guard<std::mutex> lock(g_blas_pool->m);
        if (--g_blas_pool->running == 0) g_blas_pool->done.notify_all();
    }
}

void start_blas_pool() {
    g_blas_pool = new BlasPool();  // leaked on purpose, like the kernel workers
    g_blas_pool->helpers = blas_threads() - 1;
    for (int i = 0; i < g_blas_pool->helpers; i++) std::thread(blas_helper_main).detach();
}

// Runs fn(job) on this thread, and on the helpers too when `parallel` and they are free; returns when all are done.
void blas_run(void (*fn)(void*), void* job, bool parallel) {
    if (parallel && blas_threads() > 1) {
        std::call_once(g_blas_pool_once, start_blas_pool);
        std::unique_lock<std::mutex> busy(g_blas_pool->busy, std::try_to_lock);
        if (busy.owns_lock()) {
            {
                std::lock_guard<std::mutex> lock(g_blas_pool->m);
                g_blas_pool->fn = fn;
                g_blas_pool->job = job;
                g_blas_pool->running = g_blas_pool->helpers;
                g_blas_pool->generation++;
            }
            g_blas_pool->wake.notify_all();
            fn(job);
            std::unique_lock<std::mutex> lock(g_blas_pool->m);
            g_blas_pool->done.wait(lock, [] { return g_blas_pool->running == 0; });
            return;
        }
    }
    fn(job);
}

bool blas_use_avx2() {
#if defined(__x86_64__)
    static const bool v = [] {
        const char* s = getenv("CUDAEMU_BLAS_SIMD");
        if (s && strcmp(s, "sse2") == 0) return false;
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }();
    return v;
#else
    return false;
#endif
}

// Runs items [0, items) of an already checked GEMM whose C matrices share no element, in parallel.
template <class T, class K>
void gemm_run(int ta, int tb, int m, int n, int k, T alpha, const T* A, int lda, long long sA, const T* B, int ldb, long long sB,
              T beta, T* C, int ldc, long long sC, int items, bool tf32) {
    GemmJob<T> g;
    g.ta = ta; g.tb = tb; g.m = m; g.n = n; g.k = k; g.alpha = alpha; g.beta = beta;
    g.A = A; g.lda = lda; g.sA = sA; g.B = B; g.ldb = ldb; g.sB = sB; g.C = C; g.ldc = ldc; g.sC = sC;
    g.tf32 = tf32;
    // Tiles: kMC x kNC, smaller (down to 4 panels a side) until there are a few tasks per thread.
    int threads = blas_threads();
    g.mc = std::min(kMC, (m + K::MR - 1) / K::MR * K::MR);
    g.nc = std::min(kNC, (n + K::NR - 1) / K::NR * K::NR);
    auto count = [&] {
        g.tiles_m = (m + g.mc - 1) / g.mc;
        g.tiles_n = (n + g.nc - 1) / g.nc;
        g.tasks = (long long)items * g.tiles_m * g.tiles_n;
    };
    count();
    for (;;) {
        bool shrink_n = g.nc > 4 * K::NR, shrink_m = g.mc > 4 * K::MR;
        if (g.tasks >= 2LL * threads || !(shrink_n || shrink_m)) break;
        if (shrink_n && (g.nc >= g.mc || !shrink_m)) g.nc = std::max(4 * K::NR, (g.nc / 2 + K::NR - 1) / K::NR * K::NR);
        else g.mc = std::max(4 * K::MR, (g.mc / 2 + K::MR - 1) / K::MR * K::MR);
        count();
    }
    double fmas = (double)m * n * std::max(k, 1) * items;
    blas_run(gemm_worker<T, K>, &g, g.tasks > 1 && fmas >= (double)(1 << 19));
}

// Whether the C matrices of batch items [0, batch) share no element (then they may be computed in any order):
// disjoint extents, or each item a band of rows inside every column (the items interleaved within ldc).
bool gemm_items_disjoint(int m, int n, int ldc, long long sC, int batch) {
    if (batch <= 1) return true;
    long long s = sC < 0 ? -sC : sC;
    if (s >= (long long)ldc * (n - 1) + m) return true;
    return s >= m && s * (batch - 1) + m <= ldc;
}

// C = alpha op(A) op(B) + beta C for every batch item, in batch order where the items' C matrices overlap.
template <class T>
void gemm_compute(int ta, int tb, int m, int n, int k, T alpha, const T* A, int lda, long long sA, const T* B, int ldb, long long sB,
                  T beta, T* C, int ldc, long long sC, int batch, bool tf32) {
#if defined(__x86_64__)
    auto run = blas_use_avx2() ? gemm_run<T, GemmAvx2> : gemm_run<T, GemmBase>;
#else
    auto run = gemm_run<T, GemmBase>;
#endif
    if (gemm_items_disjoint(m, n, ldc, sC, batch)) {
        run(ta, tb, m, n, k, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc, sC, batch, tf32);
        return;
    }
    for (int b = 0; b < batch; b++)
        run(ta, tb, m, n, k, alpha, A + sA * b, lda, 0, B + sB * b, ldb, 0, beta, C + sC * b, ldc, 0, 1, tf32);
}

// The GEMM family over T (float: Sgemm, SgemmStridedBatched, GemmEx; double: Dgemm, DgemmStridedBatched): the
// common checks, the batch count, then every operand's extent in every batch item before anything is written.
template <class T>
cublasStatus_t gemm_batched(const char* what, void* handle, int ta, int tb, int m, int n, int k, const T* alpha,
                            const T* A, int lda, long long sA, const T* B, int ldb, long long sB, const T* beta,
                            T* C, int ldc, long long sC, int batch, bool tf32_compute) {
    CublasHandle* h = nullptr;
    if (cublasStatus_t s = gemm_checks(what, handle, ta, tb, m, n, k, alpha, lda, ldb, beta, ldc, &h)) return s;
    if (batch < 0) return blas_fail(CUBLAS_STATUS_INVALID_VALUE, "%s: batchCount = %d (negative)", what, batch);
    if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
    // TF32 math mode applies to single-precision GEMMs only; Dgemm ignores it, as cuBLAS does.
    bool tf32 = sizeof(T) == sizeof(float) && (tf32_compute || (h->math & 0xf) == CUBLAS_TF32_TENSOR_OP_MATH);
    size_t a_bytes = *alpha == (T)0 ? 0 : span_bytes<T>(ta == CUBLAS_OP_N ? m : k, ta == CUBLAS_OP_N ? k : m, lda);
    size_t b_bytes = *alpha == (T)0 ? 0 : span_bytes<T>(tb == CUBLAS_OP_N ? k : n, tb == CUBLAS_OP_N ? n : k, ldb);
    size_t c_bytes = span_bytes<T>(m, n, ldc);
    for (int b = 0; b < batch; b++) {
        const T* Ab = A + sA * b;
        const T* Bb = B + sB * b;
        T* Cb = C + sC * b;
        if (cublasStatus_t s = check_operand(h, what, "A", Ab, a_bytes)) return s;
        if (cublasStatus_t s = check_operand(h, what, "B", Bb, b_bytes)) return s;
        if (cublasStatus_t s = check_operand(h, what, "C", Cb, c_bytes)) return s;
    }
    gemm_compute<T>(ta, tb, m, n, k, *alpha, A, lda, sA, B, ldb, sB, *beta, C, ldc, sC, batch, tf32);
    return CUBLAS_STATUS_SUCCESS;
}

} // namespace

EXPORT cublasStatus_t cublasCreate_v2(void** handle) {
    if (!handle) return blas_fail(CUBLAS_STATUS_INVALID_VALUE, "cublasCreate: handle is null");
    if (need_context()) return blas_fail(CUBLAS_STATUS_NOT_INITIALIZED, "cublasCreate: no current context on this thread (cuInit, then cuCtxSetCurrent)");
    auto* h = new CublasHandle();
    h->device = t_current->device;
    std::lock_guard<std::mutex> lock(g_blas_mutex);
    g_blas_handles.insert(h);
    *handle = h;
    return CUBLAS_STATUS_SUCCESS;
}

EXPORT cublasStatus_t cublasDestroy_v2(void* handle) {
    std::lock_guard<std::mutex> lock(g_blas_mutex);
    auto* h = (CublasHandle*)handle;
    if (!g_blas_handles.erase(h)) return blas_fail(CUBLAS_STATUS_NOT_INITIALIZED, "cublasDestroy: not a live handle");
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

EXPORT cublasStatus_t cublasSetStream_v2(void* handle, void* stream) {
    CublasHandle* h = blas_handle(handle);
    if (!h) return blas_fail(CUBLAS_STATUS_NOT_INITIALIZED, "cublasSetStream: not a live handle");
    if (stream && ((Stream*)stream)->magic != 0x5752u) return blas_fail(CUBLAS_STATUS_INVALID_VALUE, "cublasSetStream: not a stream");
    h->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}

EXPORT cublasStatus_t cublasGetVersion_v2(void* handle, int* version) {
    if (!blas_handle(handle)) return blas_fail(CUBLAS_STATUS_NOT_INITIALIZED, "cublasGetVersion: not a live handle");
    if (!version) return blas_fail(CUBLAS_STATUS_INVALID_VALUE, "cublasGetVersion: null");
    *version = 120800;  // CUBLAS_VER_MAJOR * 10000 + MINOR * 100 + PATCH
    return CUBLAS_STATUS_SUCCESS;
}

EXPORT cublasStatus_t cublasSetMathMode(void* handle, int mode) {
    CublasHandle* h = blas_handle(handle);
    if (!h) return blas_fail(CUBLAS_STATUS_NOT_INITIALIZED, "cublasSetMathMode: not a live handle");
    int base = mode & ~CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION;
    if (base < CUBLAS_DEFAULT_MATH || base > CUBLAS_TF32_TENSOR_OP_MATH)
        return blas_fail(CUBLAS_STATUS_INVALID_VALUE, "cublasSetMathMode: %d is not a cublasMath_t", mode);
    h->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}

EXPORT cublasStatus_t cublasGetMathMode(void* handle, int* mode) {
    CublasHandle* h = blas_handle(handle);
    if (!h) return blas_fail(CUBLAS_STATUS_NOT_INITIALIZED, "cublasGetMathMode: not a live handle");
    if (!mode) return blas_fail(CUBLAS_STATUS_INVALID_VALUE, "cublasGetMathMode: null");
    *mode = h->math;
    return CUBLAS_STATUS_SUCCESS;
}

EXPORT cublasStatus_t cublasSgemm_v2(void* handle, int transa, int transb, int m, int n, int k, const float* alpha, const float* A,
                                     int lda, const float* B, int ldb, const float* beta, float* C, int ldc) {
    return gemm_batched("cublasSgemm", handle, transa, transb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1, false);
}

EXPORT cublasStatus_t cublasSgemmStridedBatched(void* handle, int transa, int transb, int m, int n, int k, const float* alpha,
                                                const float* A, int lda, long long strideA, const float* B, int ldb, long long strideB,
                                                const float* beta, float* C, int ldc, long long strideC, int batchCount) {
    return gemm_batched("cublasSgemmStridedBatched", handle, transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb, strideB, beta, C,
                        ldc, strideC, batchCount, false);
}

EXPORT cublasStatus_t cublasDgemm_v2(void* handle, int transa, int transb, int m, int n, int k, const double* alpha, const double* A,
                                     int lda, const double* B, int ldb, const double* beta, double* C, int ldc) {
    return gemm_batched("cublasDgemm", handle, transa, transb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1, false);
}

EXPORT cublasStatus_t cublasDgemmStridedBatched(void* handle, int transa, int transb, int m, int n, int k, const double* alpha,
                                                const double* A, int lda, long long strideA, const double* B, int ldb, long long strideB,
                                                const double* beta, double* C, int ldc, long long strideC, int batchCount) {
    return gemm_batched("cublasDgemmStridedBatched", handle, transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb, strideB, beta, C,
                        ldc, strideC, batchCount, false);
}

EXPORT cublasStatus_t cublasGemmEx(void* handle, int transa, int transb, int m, int n, int k, const void* alpha, const void* A, int Atype,
                                   int lda, const void* B, int Btype, int ldb, const void* beta, void* C, int Ctype, int ldc,
                                   int computeType, int algo) {
    if (!blas_handle(handle)) return blas_fail(CUBLAS_STATUS_NOT_INITIALIZED, "cublasGemmEx: not a live handle");
    if (!(algo == -1 || (algo >= 0 && algo <= 23) || (algo >= 99 && algo <= 115)))
        return blas_fail(CUBLAS_STATUS_INVALID_VALUE, "cublasGemmEx: algo = %d is not a cublasGemmAlgo_t", algo);
    if (computeType != CUBLAS_COMPUTE_32F && computeType != CUBLAS_COMPUTE_32F_PEDANTIC && computeType != CUBLAS_COMPUTE_32F_FAST_TF32)
        return blas_fail(CUBLAS_STATUS_NOT_SUPPORTED, "cublasGemmEx: computeType %d is not emulated (CUBLAS_COMPUTE_32F = 68, _32F_FAST_TF32 = 77)",
                         computeType);
    if (Atype != CUDA_R_32F || Btype != CUDA_R_32F || Ctype != CUDA_R_32F)
        return blas_fail(CUBLAS_STATUS_NOT_SUPPORTED, "cublasGemmEx: types A %d, B %d, C %d: only CUDA_R_32F (0) is emulated", Atype, Btype, Ctype);
    return gemm_batched("cublasGemmEx", handle, transa, transb, m, n, k, (const float*)alpha, (const float*)A, lda, 0, (const float*)B, ldb,
                        0, (const float*)beta, (float*)C, ldc, 0, 1, computeType == CUBLAS_COMPUTE_32F_FAST_TF32);
}

EXPORT const char* cublasGetStatusName(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "CUBLAS_STATUS_UNKNOWN";
    }
}

EXPORT const char* cublasGetStatusString(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
    case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    case CUBLAS_STATUS_LICENSE_ERROR: return "error detected trying to check the license";
    default: return "unknown error";
    }
}

// =================================================================================================
// NCCL subset (nccl.h) over the emulated devices of this process. A communicator's ranks form a clique;
// every collective call is a post numbered by the rank's sequence counter, and a collective runs (on the
// thread that posts last) once every rank of the clique has posted that number. Inside
// ncclGroupStart/End the posts of the calling thread wait until ncclGroupEnd, so one thread can drive
// every rank. Buffers must be device memory of the communicator's device. Reductions combine ranks in
// ascending rank order, so results are bitwise reproducible. A mismatch across ranks (kind, count, type,
// op, root) fails every rank with ncclInvalidUsage; a rank that never posts fails the others after
// the timeout (CUDAEMU_NCCL_TIMEOUT_MS, default 30000; cudaemuNcclSetTimeout overrides).
// The detail of a failure is in ncclGetLastError (and cudaemuGetLastErrorMessage).
//
// Cross-process mode: when ncclGetUniqueId runs where MPI is initialised and MPI_COMM_WORLD has more than one
// process (or CUDAEMU_NCCL_TRANSPORT=mpi; =inproc forces the in-process mode), the id is a cross-process id.
// ncclCommInitRank with it is an MPI_Comm_split of MPI_COMM_WORLD (collective over the whole MPI world: every
// process joins, one rank per process), ncclCommSplit an MPI_Comm_split of the communicator's MPI communicator,
// and collectives move bytes over MPI with the same ascending-rank-order reductions (see "cross-process
// transport over MPI" below). Inside a group they run at ncclGroupEnd in call order. ncclCommAbort cannot wake
// the other processes: they end with the job (MPI_Abort), or fail at the timeout.
// =================================================================================================
typedef int ncclResult_t;
enum : int { ncclSuccess = 0, ncclUnhandledCudaError = 1, ncclSystemError = 2, ncclInternalError = 3, ncclInvalidArgument = 4,
             ncclInvalidUsage = 5, ncclRemoteError = 6, ncclInProgress = 7 };
enum : int { ncclInt8 = 0, ncclUint8 = 1, ncclInt32 = 2, ncclUint32 = 3, ncclInt64 = 4, ncclUint64 = 5, ncclFloat16 = 6,
             ncclFloat32 = 7, ncclFloat64 = 8, ncclBfloat16 = 9 };
enum : int { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4 };
constexpr int NCCL_SPLIT_NOCOLOR = -1;
constexpr int kNcclIdBytes = 128;
struct ncclUniqueId { char internal[kNcclIdBytes]; };

namespace {

enum CollKind { COLL_ALLREDUCE, COLL_BROADCAST, COLL_SPLIT };
const char* kind_name(int k) { return k == COLL_ALLREDUCE ? "ncclAllReduce" : k == COLL_BROADCAST ? "ncclBroadcast" : "ncclCommSplit"; }

struct Comm;
struct Post {
    int kind = 0;
    const void* send = nullptr;
    void* recv = nullptr;
    size_t count = 0;
    int type = 0, op = 0, root = 0;
    int color = 0, key = 0;
    Comm** newcomm = nullptr;
};
struct Slot {
    std::vector<Post> posts;
    std::vector<bool> present;
    int arrived = 0;
    bool done = false;
    ncclResult_t result = ncclSuccess;
    std::string error;
};
struct Clique {
    int nranks = 0;
    std::vector<Comm*> ranks;   // by rank; null until joined (ncclCommInitRank)
    int joined = 0;
    int refs = 0;               // live communicators
    std::map<unsigned long long, Slot> slots;  // by sequence number
    std::string aborted;        // why, once a member aborted
    std::condition_variable cv;
};
struct MpiLink;
struct Comm {
    unsigned magic = 0xCC11u;
    Clique* clique = nullptr;            // in-process communicators
    std::shared_ptr<MpiLink> mpi;        // cross-process communicators (then clique is null)
    int rank = 0, nranks = 0, device = 0;
    unsigned long long seq = 0;
    ncclResult_t async_error = ncclSuccess;
};

std::mutex g_nccl_mutex;  // guards every clique, slot and communicator
std::set<Comm*> g_comms;
std::map<std::string, Clique*> g_pending_inits;  // ncclCommInitRank rendezvous, by unique id
std::atomic<unsigned long long> g_id_counter{1};
std::atomic<long> g_nccl_timeout_ms{-1};

// A collective queued by ncclGroupStart until ncclGroupEnd. Cross-process ones (mpi) run at ncclGroupEnd in call order.
struct GroupItem { Comm* comm; unsigned long long seq; Post post; bool posted = false; bool init_wait = false; bool mpi = false; };
thread_local int t_group_depth = 0;
thread_local std::vector<GroupItem> t_group;
thread_local ncclResult_t t_group_error = ncclSuccess;

ncclResult_t nccl_fail(ncclResult_t code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
ncclResult_t nccl_fail(ncclResult_t code, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t_message, sizeof t_message, fmt, ap);
    va_end(ap);
    return code;
}

long nccl_timeout_ms() {
    long t = g_nccl_timeout_ms.load();
    return t > 0 ? t : env_long("CUDAEMU_NCCL_TIMEOUT_MS", 30000);
}

size_t type_size(int t) {
    switch (t) {
    case ncclInt8: case ncclUint8: return 1;
    case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
    default: return 0;
    }
}

const char* type_name(int t) {
    static const char* names[] = {"ncclInt8", "ncclUint8", "ncclInt32", "ncclUint32", "ncclInt64", "ncclUint64", "ncclFloat16", "ncclFloat32",
                                  "ncclFloat64", "ncclBfloat16"};
    return t >= 0 && t <= 9 ? names[t] : "ncclDataType?";
}

const char* op_text(int op) {
    static const char* names[] = {"ncclSum", "ncclProd", "ncclMax", "ncclMin", "ncclAvg"};
    return op >= 0 && op <= 4 ? names[op] : "ncclRedOp?";
}

// A live communicator, or null. Caller holds g_nccl_mutex.
Comm* live(void* c) { return g_comms.count((Comm*)c) ? (Comm*)c : nullptr; }

ncclResult_t check_buffer(const Comm* c, const char* what, const char* name, const void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(g_mem_mutex);
    const Alloc* a = find_alloc((uintptr_t)p, bytes);
    if (!a)
        return nccl_fail(ncclInvalidArgument, "%s: %s = %p + %zu bytes (rank %d) is not inside one device allocation", what, name, p, bytes, c->rank);
    if (a->device != c->device)
        return nccl_fail(ncclInvalidArgument, "%s: %s = %p is memory of device %d, but rank %d of this communicator is on device %d", what,
                         name, p, a->device, c->rank, c->device);
    return ncclSuccess;
}

// acc[i] = acc[i] (op) b[i] in T: one step of the ascending-rank-order reduction both transports use.
template <typename T>
void combine(T* acc, const T* b, size_t n, int op) {
    switch (op) {
    case ncclSum: case ncclAvg: for (size_t i = 0; i < n; i++) acc[i] = (T)(acc[i] + b[i]); break;
    case ncclProd: for (size_t i = 0; i < n; i++) acc[i] = (T)(acc[i] * b[i]); break;
    case ncclMax: for (size_t i = 0; i < n; i++) acc[i] = std::max(acc[i], b[i]); break;
    case ncclMin: for (size_t i = 0; i < n; i++) acc[i] = std::min(acc[i], b[i]); break;
    default: break;
    }
}

// ncclAvg's last step: the sum divided by the rank count, in T.
template <typename T>
void divide(T* acc, size_t n, int nranks) {
    for (size_t i = 0; i < n; i++) acc[i] = (T)(acc[i] / (T)nranks);
}

// combine/divide on a datatype known only at run time (the types validated when posted).
template <template <typename> class F, typename... A>
void by_type(int type, A... args) {
    switch (type) {
    case ncclFloat32: F<float>::run(args...); break;
    case ncclFloat64: F<double>::run(args...); break;
    case ncclInt32: F<int32_t>::run(args...); break;
    case ncclUint32: F<uint32_t>::run(args...); break;
    case ncclInt64: F<int64_t>::run(args...); break;
    case ncclUint64: F<uint64_t>::run(args...); break;
    case ncclInt8: F<int8_t>::run(args...); break;
    case ncclUint8: F<uint8_t>::run(args...); break;
    default: break;  // rejected when posted
    }
}
template <typename T> struct Combine { static void run(void* acc, const void* b, size_t n, int op) { combine<T>((T*)acc, (const T*)b, n, op); } };
template <typename T> struct Divide { static void run(void* acc, size_t n, int nranks) { divide<T>((T*)acc, n, nranks); } };

void reduce(const Slot& s, int type, int op, int nranks) {
    size_t bytes = s.posts[0].count * type_size(type);
    std::vector<char> acc(bytes);
    memcpy(acc.data(), s.posts[0].send, bytes);
    for (int r = 1; r < nranks; r++)  // ascending rank order: ((b0 + b1) + b2) + ...
        by_type<Combine>(type, (void*)acc.data(), s.posts[r].send, s.posts[0].count, op);
    if (op == ncclAvg) by_type<Divide>(type, (void*)acc.data(), s.posts[0].count, nranks);
    for (int r = 0; r < nranks; r++) memcpy(s.posts[r].recv, acc.data(), bytes);
}

// Runs a slot every rank has posted; sets its result. Caller holds g_nccl_mutex.
void execute(Clique* q, Slot& s, unsigned long long seq) {
    const Post& p0 = s.posts[0];
    char buf[512];
    for (int r = 1; r < q->nranks; r++) {
        const Post& p = s.posts[r];
        const char* diff = p.kind != p0.kind ? "collective" : p.kind == COLL_SPLIT ? nullptr : p.count != p0.count ? "count" : p.type != p0.type ? "datatype"
                         : (p.kind == COLL_ALLREDUCE && p.op != p0.op) ? "reduction op" : (p.kind == COLL_BROADCAST && p.root != p0.root) ? "root" : nullptr;
        if (diff) {
            snprintf(buf, sizeof buf, "collective #%llu of a %d-rank communicator: ranks disagree on the %s: rank 0 posted %s(count %zu, %s, %s, root %d), "
                     "rank %d posted %s(count %zu, %s, %s, root %d)", seq, q->nranks, diff, kind_name(p0.kind), p0.count, type_name(p0.type),
                     op_text(p0.op), p0.root, r, kind_name(p.kind), p.count, type_name(p.type), op_text(p.op), p.root);
            s.result = ncclInvalidUsage;
            s.error = buf;
            return;
        }
    }
    if (p0.kind == COLL_ALLREDUCE) {
        reduce(s, p0.type, p0.op, q->nranks);
    } else if (p0.kind == COLL_BROADCAST) {
        size_t bytes = p0.count * type_size(p0.type);
        const void* src = s.posts[p0.root].send;
        for (int r = 0; r < q->nranks; r++)
            if (s.posts[r].recv != src) memmove(s.posts[r].recv, src, bytes);
    } else {  // split: group by color, order by (key, old rank)
        std::map<int, std::vector<int>> colors;
        for (int r = 0; r < q->nranks; r++)
            if (s.posts[r].color != NCCL_SPLIT_NOCOLOR) colors[s.posts[r].color].push_back(r);
        for (int r = 0; r < q->nranks; r++)
            if (s.posts[r].color == NCCL_SPLIT_NOCOLOR) *s.posts[r].newcomm = nullptr;
        for (auto& [color, members] : colors) {
            std::stable_sort(members.begin(), members.end(), [&](int a, int b) { return s.posts[a].key < s.posts[b].key; });
            auto* nq = new Clique();
            nq->nranks = (int)members.size();
            nq->ranks.assign(members.size(), nullptr);
            for (size_t i = 0; i < members.size(); i++) {
                auto* c = new Comm();
                c->clique = nq;
                c->rank = (int)i;
                c->nranks = nq->nranks;
                c->device = q->ranks[members[i]]->device;
                nq->ranks[i] = c;
                nq->joined++;
                nq->refs++;
                g_comms.insert(c);
                *s.posts[members[i]].newcomm = c;
            }
        }
    }
    s.result = ncclSuccess;
}

// Adds one rank's post; runs the collective when it completes the slot. Caller holds g_nccl_mutex.
void post(Comm* c, unsigned long long seq, const Post& p) {
    Clique* q = c->clique;
    Slot& s = q->slots[seq];
    if (s.posts.empty()) { s.posts.resize(q->nranks); s.present.assign(q->nranks, false); }
    s.posts[c->rank] = p;
    s.present[c->rank] = true;
    if (++s.arrived == q->nranks) {
        execute(q, s, seq);
        s.done = true;
        q->cv.notify_all();
    }
}

// Waits for this rank's post to complete; removes the slot when the last rank has seen it. Holds lock.
ncclResult_t wait_slot(std::unique_lock<std::mutex>& lock, Comm* c, unsigned long long seq, const char* what) {
    Clique* q = c->clique;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(nccl_timeout_ms());
    while (true) {
        Slot& s = q->slots[seq];
        if (s.done) {
            ncclResult_t r = s.result;
            if (r != ncclSuccess) nccl_fail(r, "%s (rank %d): %s", what, c->rank, s.error.c_str());
            if (--s.arrived == 0) q->slots.erase(seq);
            return r;
        }
        if (!q->aborted.empty()) {
            c->async_error = ncclRemoteError;
            return nccl_fail(ncclRemoteError, "%s (rank %d): %s", what, c->rank, q->aborted.c_str());
        }
        if (q->cv.wait_until(lock, deadline) == std::cv_status::timeout && !q->slots[seq].done) {
            std::string missing;
            for (int r = 0; r < q->nranks; r++)
                if (!q->slots[seq].present.empty() && !q->slots[seq].present[r]) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
            c->async_error = ncclInvalidUsage;
            return nccl_fail(ncclInvalidUsage, "%s (rank %d): timed out after %ld ms waiting for rank(s) %s of the %d-rank communicator to post collective #%llu "
                             "(from one thread, drive every rank inside ncclGroupStart/ncclGroupEnd)", what, c->rank, nccl_timeout_ms(), missing.c_str(),
                             q->nranks, seq);
        }
    }
}

// ---- cross-process transport over MPI ------------------------------------------------------------
// A communicator whose ranks are in different processes (one emulated device per process, as under
// mpirun) carries its collectives over MPI between the processes' host memory, where the emulated
// devices' memory lives. Open MPI is not linked: the emulator must load where MPI is absent, and a
// process that uses MPI has already loaded libmpi.so.40 (Sdp's C# bindings open it RTLD_GLOBAL), so
// its entry points are looked up in that copy (dlopen RTLD_NOLOAD) and its predefined handles by Open
// MPI's symbol names (ompi_mpi_comm_world, ompi_mpi_byte, ...: in Open MPI, MPI_COMM_WORLD is
// &ompi_mpi_comm_world). Values only ever move as bytes; no MPI reduction operator touches them, and
// each rank combines the ranks' copies of its chunk in ascending rank order itself, so results are the
// same bits on every rank and equal to the in-process mode's. Every collective first all-gathers each
// rank's (kind, count, type, op, root), so ranks that disagree fail alike with a message instead of
// hanging. Waits poll nonblocking MPI calls (MPI_Test) against the NCCL timeout and notice an abort.
constexpr int kMpiUndefined = -32766;               // MPI_UNDEFINED (Open MPI's mpi.h)
constexpr size_t kMpiSegmentElements = size_t(1) << 24;  // per reduce-scatter/all-gather round: bounds scratch, keeps int counts
constexpr size_t kMpiBcastBytes = size_t(1) << 30;

struct MpiApi {
    void* lib = nullptr;
    int (*Initialized)(int*);
    int (*Finalized)(int*);
    int (*Comm_size)(void*, int*);
    int (*Comm_rank)(void*, int*);
    int (*Comm_split)(void*, int, int, void**);
    int (*Comm_free)(void**);
    int (*Comm_set_errhandler)(void*, void*);
    int (*Error_string)(int, char*, int*);
    int (*Iallgather)(const void*, int, void*, void*, int, void*, void*, void**);
    int (*Ialltoallv)(const void*, const int*, const int*, void*, void*, const int*, const int*, void*, void*, void**);
    int (*Iallgatherv)(const void*, int, void*, void*, const int*, const int*, void*, void*, void**);
    int (*Ibcast)(void*, int, void*, int, void*, void**);
    int (*Test)(void**, int*, void*);
    void* comm_world = nullptr;
    void* comm_null = nullptr;
    void* byte = nullptr;
    void* errors_return = nullptr;
};

// One cross-process communicator's MPI side, shared by its Comm and by the threads inside its collectives,
// so that an abort from another thread neither frees it under them nor waits for them.
struct MpiLink {
    void* comm = nullptr;              // MPI_Comm; null once freed
    int rank = 0, size = 0;
    unsigned long long seq = 0;        // collectives so far, for messages
    std::atomic<bool> aborted{false};
};

std::mutex g_mpi_mutex;  // serializes the emulator's MPI calls (enough under MPI_THREAD_SERIALIZED); never held while waiting
MpiApi g_mpi;
bool g_mpi_loaded = false;

// Open MPI's entry points from the copy already in this process, or null with the reason in *why.
// Caller holds g_mpi_mutex. Only success is cached: MPI may be loaded after the first attempt.
const MpiApi* mpi_api(std::string* why) {
    if (g_mpi_loaded) return &g_mpi;
    void* lib = dlopen("libmpi.so.40", RTLD_NOW | RTLD_NOLOAD);
    if (!lib) {
        *why = "Open MPI (libmpi.so.40) is not loaded in this process";
        return nullptr;
    }
    MpiApi a;
    a.lib = lib;
    const char* missing = nullptr;
    auto sym = [&](const char* name) {
        void* p = dlsym(lib, name);
        if (!p && !missing) missing = name;
        return p;
    };
    a.Initialized = (int (*)(int*))sym("MPI_Initialized");
    a.Finalized = (int (*)(int*))sym("MPI_Finalized");
    a.Comm_size = (int (*)(void*, int*))sym("MPI_Comm_size");
    a.Comm_rank = (int (*)(void*, int*))sym("MPI_Comm_rank");
    a.Comm_split = (int (*)(void*, int, int, void**))sym("MPI_Comm_split");
    a.Comm_free = (int (*)(void**))sym("MPI_Comm_free");
    a.Comm_set_errhandler = (int (*)(void*, void*))sym("MPI_Comm_set_errhandler");
    a.Error_string = (int (*)(int, char*, int*))sym("MPI_Error_string");
    a.Iallgather = (int (*)(const void*, int, void*, void*, int, void*, void*, void**))sym("MPI_Iallgather");
    a.Ialltoallv = (int (*)(const void*, const int*, const int*, void*, void*, const int*, const int*, void*, void*, void**))sym("MPI_Ialltoallv");
    a.Iallgatherv = (int (*)(const void*, int, void*, void*, const int*, const int*, void*, void*, void**))sym("MPI_Iallgatherv");
    a.Ibcast = (int (*)(void*, int, void*, int, void*, void**))sym("MPI_Ibcast");
    a.Test = (int (*)(void**, int*, void*))sym("MPI_Test");
    a.comm_world = sym("ompi_mpi_comm_world");
    a.comm_null = sym("ompi_mpi_comm_null");
    a.byte = sym("ompi_mpi_byte");
    a.errors_return = sym("ompi_mpi_errors_return");
    if (missing) {
        *why = std::string("libmpi.so.40 has no ") + missing + " (the emulator's MPI transport needs Open MPI 3 or later)";
        dlclose(lib);
        return nullptr;
    }
    g_mpi = a;
    g_mpi_loaded = true;
    return &g_mpi;
}

// The text of an MPI error code (MPI_Error_string is valid between MPI_Init and MPI_Finalize, where we are).
std::string mpi_error_text(int status) {
    char text[512] = {0};
    int length = 0;
    if (g_mpi_loaded && g_mpi.Error_string(status, text, &length) == 0 && length > 0) return std::string(text, std::min(length, 511));
    return "unknown MPI error";
}

// Fails with ncclSystemError naming the MPI call (the formatted text) and MPI's description of status.
ncclResult_t mpi_fail(int status, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
ncclResult_t mpi_fail(int status, const char* fmt, ...) {
    char call[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(call, sizeof call, fmt, ap);
    va_end(ap);
    return nccl_fail(ncclSystemError, "%s failed: MPI error %d (%s)", call, status, mpi_error_text(status).c_str());
}

// Whether MPI is usable here: loaded, initialised and not finalised; *world_size is MPI_COMM_WORLD's size.
// Caller holds g_mpi_mutex. Returns the reason it is not, or "".
std::string mpi_usable(int* world_size) {
    std::string why;
    const MpiApi* a = mpi_api(&why);
    if (!a) return why;
    int initialized = 0, finalized = 0;
    if (a->Initialized(&initialized) != 0 || !initialized) return "MPI_Init has not been called in this process";
    if (a->Finalized(&finalized) != 0 || finalized) return "MPI_Finalize has already run in this process";
    if (int rc = a->Comm_size(a->comm_world, world_size)) return "MPI_Comm_size(MPI_COMM_WORLD) failed: " + mpi_error_text(rc);
    return "";
}

// Waits for one nonblocking MPI call, polling MPI_Test: fails when the communicator is aborted meanwhile
// or the NCCL timeout passes (the request is then abandoned; the communicator is unusable and should be
// aborted, as NCCL asks after a failed collective).
ncclResult_t mpi_wait(MpiLink& link, void*& request, const char* call, const char* what,
                      std::chrono::steady_clock::time_point deadline) {
    for (int polls = 0;; polls++) {
        int done = 0;
        {
            std::lock_guard<std::mutex> lock(g_mpi_mutex);
            if (int rc = g_mpi.Test(&request, &done, nullptr)) return mpi_fail(rc, "%s (rank %d of %d): MPI_Test of %s", what, link.rank, link.size, call);
        }
        if (done) return ncclSuccess;
        if (link.aborted)
            return nccl_fail(ncclRemoteError, "%s (rank %d of %d): the communicator was aborted (ncclCommAbort) during %s", what, link.rank, link.size, call);
        if (std::chrono::steady_clock::now() > deadline)
            return nccl_fail(ncclRemoteError, "%s (rank %d of %d, cross-process): timed out after %ld ms in %s: another process has not reached "
                             "collective #%llu (it hangs, failed or posts something else); abort the job", what, link.rank, link.size, nccl_timeout_ms(),
                             call, link.seq);
        // Oversubscribed ranks (mpirun --oversubscribe) need the core: yield first, then sleep briefly.
        if (polls < 2000) sched_yield(); else usleep(100);
    }
}

// Starts one nonblocking MPI call (start(request) returns its status) unless the link is aborted or freed.
template <typename Start>
ncclResult_t mpi_start(MpiLink& link, void*& request, const char* call, const char* what, Start start) {
    std::lock_guard<std::mutex> lock(g_mpi_mutex);
    if (link.aborted || !link.comm) return nccl_fail(ncclRemoteError, "%s (rank %d of %d): the communicator was aborted (ncclCommAbort)", what, link.rank, link.size);
    if (int rc = start(request)) return mpi_fail(rc, "%s (rank %d of %d): %s", what, link.rank, link.size, call);
    return ncclSuccess;
}

#define MPI_STEP(link, call_text, what, deadline, ...)                                                                  \
    do {                                                                                                            \
        void* request_ = nullptr;                                                                                   \
        if (ncclResult_t r_ = mpi_start(link, request_, call_text, what, [&](void*& req) { return __VA_ARGS__; })) return r_; \
        if (ncclResult_t r_ = mpi_wait(link, request_, call_text, what, deadline)) return r_;                        \
    } while (0)

// Every rank's (kind, count, datatype, op, root) gathered and compared with rank 0's: ranks that disagree all
// fail with the same message, as in the in-process mode.
ncclResult_t mpi_agree(MpiLink& link, const Post& p, const char* what, std::chrono::steady_clock::time_point deadline) {
    int64_t mine[5] = {p.kind, (int64_t)p.count, p.type, p.op, p.root};
    if (p.kind == COLL_SPLIT) mine[1] = mine[2] = mine[3] = mine[4] = 0;  // colors and keys differ by design
    std::vector<int64_t> all(5 * (size_t)link.size);
    MPI_STEP(link, "MPI_Iallgather (the ranks' collective headers)", what, deadline,
             g_mpi.Iallgather(mine, (int)sizeof mine, g_mpi.byte, all.data(), (int)sizeof mine, g_mpi.byte, link.comm, &req));
    const int64_t* p0 = all.data();
    for (int r = 1; r < link.size; r++) {
        const int64_t* pr = all.data() + 5 * r;
        const char* diff = pr[0] != p0[0] ? "collective" : pr[1] != p0[1] ? "count" : pr[2] != p0[2] ? "datatype"
                         : (p0[0] == COLL_ALLREDUCE && pr[3] != p0[3]) ? "reduction op" : (p0[0] == COLL_BROADCAST && pr[4] != p0[4]) ? "root" : nullptr;
        if (diff)
            return nccl_fail(ncclInvalidUsage, "%s: collective #%llu of a %d-rank cross-process communicator: ranks disagree on the %s: rank 0 posted "
                             "%s(count %lld, %s, %s, root %lld), rank %d posted %s(count %lld, %s, %s, root %lld)", what, link.seq, link.size, diff,
                             kind_name((int)p0[0]), (long long)p0[1], type_name((int)p0[2]), op_text((int)p0[3]), (long long)p0[4], r,
                             kind_name((int)pr[0]), (long long)pr[1], type_name((int)pr[2]), op_text((int)pr[3]), (long long)pr[4]);
    }
    return ncclSuccess;
}

// All-reduce as a reduce-scatter plus all-gather of bytes: chunk q of each segment belongs to rank q, which
// receives every rank's copy (MPI_Ialltoallv), combines them in ascending rank order, and hands the result
// to everyone (MPI_Iallgatherv). Each rank sends 2(n-1)/n of the buffer, the ring's volume.
ncclResult_t mpi_allreduce(MpiLink& link, const Post& p, const char* what, std::chrono::steady_clock::time_point deadline) {
    const int n = link.size, me = link.rank;
    const size_t esz = type_size(p.type);
    std::vector<int> starts(n), lengths(n), send_counts(n), send_displs(n), recv_counts(n), recv_displs(n);
    size_t max_chunk = (std::min(p.count, kMpiSegmentElements) + n - 1) / n;
    std::vector<char> scratch(std::max<size_t>(1, max_chunk * n * esz));
    for (size_t segment = 0; segment < p.count; segment += kMpiSegmentElements) {
        size_t m = std::min(kMpiSegmentElements, p.count - segment);
        for (int q = 0; q < n; q++) {
            starts[q] = (int)(q * m / n);
            lengths[q] = (int)((q + 1) * m / n) - starts[q];
            send_counts[q] = lengths[q] * (int)esz;
            send_displs[q] = starts[q] * (int)esz;
        }
        const int mine = lengths[me];
        for (int q = 0; q < n; q++) {
            recv_counts[q] = mine * (int)esz;
            recv_displs[q] = q * mine * (int)esz;
        }
        const char* send = (const char*)p.send + segment * esz;
        char* recv = (char*)p.recv + segment * esz;
        MPI_STEP(link, "MPI_Ialltoallv (reduce-scatter)", what, deadline,
                 g_mpi.Ialltoallv(send, send_counts.data(), send_displs.data(), g_mpi.byte, scratch.data(), recv_counts.data(), recv_displs.data(),
                                  g_mpi.byte, link.comm, &req));
        for (int q = 1; q < n; q++)  // ascending rank order: ((c0 + c1) + c2) + ...
            by_type<Combine>(p.type, (void*)scratch.data(), (const void*)(scratch.data() + (size_t)q * mine * esz), (size_t)mine, p.op);
        if (p.op == ncclAvg) by_type<Divide>(p.type, (void*)scratch.data(), (size_t)mine, n);
        MPI_STEP(link, "MPI_Iallgatherv (all-gather)", what, deadline,
                 g_mpi.Iallgatherv(scratch.data(), mine * (int)esz, g_mpi.byte, recv, send_counts.data(), send_displs.data(), g_mpi.byte, link.comm, &req));
    }
    return ncclSuccess;
}

ncclResult_t mpi_broadcast(MpiLink& link, const Post& p, const char* what, std::chrono::steady_clock::time_point deadline) {
    size_t bytes = p.count * type_size(p.type);
    if (link.rank == p.root && p.send != p.recv) memmove(p.recv, p.send, bytes);
    for (size_t done = 0; done < bytes; done += kMpiBcastBytes) {
        int piece = (int)std::min(kMpiBcastBytes, bytes - done);
        MPI_STEP(link, "MPI_Ibcast", what, deadline, g_mpi.Ibcast((char*)p.recv + done, piece, g_mpi.byte, p.root, link.comm, &req));
    }
    return ncclSuccess;
}

// A cross-process communicator over MPI communicator mpi_comm (already ERRORS_RETURN), for this thread's device.
// Caller holds g_nccl_mutex.
Comm* new_mpi_comm(void* mpi_comm, int rank, int size, int device) {
    auto link = std::make_shared<MpiLink>();
    link->comm = mpi_comm;
    link->rank = rank;
    link->size = size;
    auto* c = new Comm();
    c->mpi = link;
    c->rank = rank;
    c->nranks = size;
    c->device = device;
    g_comms.insert(c);
    return c;
}

// MPI_Comm_split of parent (blocking: MPI has no nonblocking split), MPI_ERRORS_RETURN on the result, and its
// rank and size; *out is null for MPI_UNDEFINED. Caller holds g_mpi_mutex.
ncclResult_t mpi_split(void* parent, const char* parent_name, int color, int key, void** out, int* rank, int* size, const char* what) {
    void* child = nullptr;
    if (int rc = g_mpi.Comm_split(parent, color, key, &child)) return mpi_fail(rc, "%s: MPI_Comm_split(%s, color %d, key %d)", what, parent_name, color, key);
    if (!child || child == g_mpi.comm_null) { *out = nullptr; return ncclSuccess; }
    if (int rc = g_mpi.Comm_set_errhandler(child, g_mpi.errors_return)) return mpi_fail(rc, "%s: MPI_Comm_set_errhandler(MPI_ERRORS_RETURN)", what);
    if (int rc = g_mpi.Comm_rank(child, rank)) return mpi_fail(rc, "%s: MPI_Comm_rank", what);
    if (int rc = g_mpi.Comm_size(child, size)) return mpi_fail(rc, "%s: MPI_Comm_size", what);
    *out = child;
    return ncclSuccess;
}

// Frees a cross-process communicator's MPI communicator (Open MPI's MPI_Comm_free is local). An abort must not
// block, so it only tries the lock: when another thread is inside an MPI call of the emulator, it leaves the
// MPI communicator to the end of the job (MPI_Abort or MPI_Finalize).
void mpi_release(MpiLink& link, bool abort) {
    std::unique_lock<std::mutex> lock(g_mpi_mutex, std::defer_lock);
    if (abort) {
        if (!lock.try_lock()) return;
    } else {
        lock.lock();
    }
    if (!link.comm || !g_mpi_loaded) return;
    int finalized = 0;
    if (g_mpi.Finalized(&finalized) == 0 && !finalized) g_mpi.Comm_free(&link.comm);  // a failure here leaves nothing to act on
    link.comm = nullptr;
}

// A validated collective on a cross-process communicator, run now. Called without g_nccl_mutex (waits must
// not block the in-process communicators, nor an abort from another thread).
ncclResult_t mpi_collective(Comm* comm, const Post& p, const char* what) {
    std::shared_ptr<MpiLink> link;
    int device;
    {
        std::lock_guard<std::mutex> lock(g_nccl_mutex);
        Comm* c = live(comm);
        if (!c) return nccl_fail(ncclInvalidArgument, "%s: comm %p is not a live communicator", what, (void*)comm);
        link = c->mpi;
        device = c->device;
    }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(nccl_timeout_ms());
    link->seq++;
    ncclResult_t r = mpi_agree(*link, p, what, deadline);
    if (r == ncclSuccess) {
        if (p.kind == COLL_ALLREDUCE) {
            r = p.count ? mpi_allreduce(*link, p, what, deadline) : ncclSuccess;
        } else if (p.kind == COLL_BROADCAST) {
            r = p.count ? mpi_broadcast(*link, p, what, deadline) : ncclSuccess;
        } else {
            void* child = nullptr;
            int rank = 0, size = 0;
            {
                std::lock_guard<std::mutex> lock(g_mpi_mutex);
                r = link->comm ? mpi_split(link->comm, "the parent communicator", p.color == NCCL_SPLIT_NOCOLOR ? kMpiUndefined : p.color, p.key, &child,
                                           &rank, &size, what)
                               : nccl_fail(ncclRemoteError, "%s (rank %d of %d): the communicator was aborted (ncclCommAbort)", what, link->rank, link->size);
            }
            if (r == ncclSuccess) {
                std::lock_guard<std::mutex> lock(g_nccl_mutex);
                *p.newcomm = child ? new_mpi_comm(child, rank, size, device) : nullptr;
            }
        }
    }
    if (r != ncclSuccess && r != ncclInvalidArgument) {
        std::lock_guard<std::mutex> lock(g_nccl_mutex);
        if (Comm* c = live(comm)) c->async_error = r;
    }
    return r;
}

// ncclCommInitRank for a cross-process id: MPI_Comm_split of MPI_COMM_WORLD with a color derived from the id
// and key = rank. It is collective over MPI_COMM_WORLD: every process of the MPI world must call it (for
// this id or for another cross-process id) at the same point, which is how Sdp's processes make their world.
ncclResult_t mpi_init_rank(Comm** comm, int nranks, const std::string& id, int rank) {
    uint32_t hash = 2166136261u;  // FNV-1a of the id: the same color in every process that got this id
    for (unsigned char ch : id) hash = (hash ^ ch) * 16777619u;
    int color = (int)(hash & 0x7fffffff);
    void* mpi_comm = nullptr;
    int mpi_rank = 0, mpi_size = 0;
    {
        std::lock_guard<std::mutex> lock(g_mpi_mutex);
        int world_size = 0;
        std::string why = mpi_usable(&world_size);
        if (!why.empty()) return nccl_fail(ncclInvalidUsage, "ncclCommInitRank (rank %d of %d): the id is for the cross-process (MPI) transport, but %s", rank, nranks, why.c_str());
        if (ncclResult_t r = mpi_split(g_mpi.comm_world, "MPI_COMM_WORLD", color, rank, &mpi_comm, &mpi_rank, &mpi_size, "ncclCommInitRank")) return r;
        if (mpi_size != nranks || mpi_rank != rank) {
            g_mpi.Comm_free(&mpi_comm);
            return nccl_fail(ncclInvalidUsage, "ncclCommInitRank (rank %d of %d): %d process(es) of MPI_COMM_WORLD joined this id and this one is their rank %d; "
                             "every rank 0..%d must be one process, and every process of MPI_COMM_WORLD must call ncclCommInitRank at the same point",
                             rank, nranks, mpi_size, mpi_rank, nranks - 1);
        }
    }
    std::lock_guard<std::mutex> lock(g_nccl_mutex);
    *comm = new_mpi_comm(mpi_comm, rank, nranks, t_current->device);
    return ncclSuccess;
}

#undef MPI_STEP

// A collective from the public entry points: validated now, posted now (or at ncclGroupEnd in a group).
ncclResult_t collective(void* comm, const Post& p, const char* what) {
    std::unique_lock<std::mutex> lock(g_nccl_mutex);
    Comm* c = live(comm);
    if (!c) return nccl_fail(ncclInvalidArgument, "%s: comm %p is not a live communicator", what, comm);
    if (c->mpi ? c->mpi->aborted.load() : !c->clique->aborted.empty())
        return nccl_fail(ncclInvalidUsage, "%s (rank %d): %s", what, c->rank, c->mpi ? "the communicator was aborted (ncclCommAbort)" : c->clique->aborted.c_str());
    if (p.kind != COLL_SPLIT) {
        if (type_size(p.type) == 0) return nccl_fail(ncclInvalidArgument, "%s: datatype %d is not an ncclDataType_t", what, p.type);
        if (p.type == ncclFloat16 || p.type == ncclBfloat16)
            return nccl_fail(ncclInvalidArgument, "%s: %s is not emulated (ncclFloat32, ncclFloat64 and the integer types are)", what, type_name(p.type));
        size_t bytes = p.count * type_size(p.type);
        if (p.kind == COLL_ALLREDUCE) {
            if (p.op < ncclSum || p.op > ncclAvg) return nccl_fail(ncclInvalidArgument, "%s: op %d is not an ncclRedOp_t", what, p.op);
            if (p.op == ncclAvg && p.type != ncclFloat32 && p.type != ncclFloat64)
                return nccl_fail(ncclInvalidArgument, "%s: ncclAvg needs a floating-point datatype", what);
        } else if (p.root < 0 || p.root >= c->nranks) {
            return nccl_fail(ncclInvalidArgument, "%s: root %d is not a rank of the %d-rank communicator", what, p.root, c->nranks);
        }
        if (bytes) {
            if (p.kind == COLL_ALLREDUCE || c->rank == p.root)
                if (ncclResult_t r = check_buffer(c, what, "sendbuff", p.send, bytes)) return r;
            if (ncclResult_t r = check_buffer(c, what, "recvbuff", p.recv, bytes)) return r;
        }
    }
    unsigned long long seq = c->seq++;
    if (t_group_depth > 0) {
        t_group.push_back(GroupItem{c, seq, p, false, false, c->mpi != nullptr});
        return ncclSuccess;
    }
    if (c->mpi) {
        lock.unlock();
        return mpi_collective(c, p, what);
    }
    post(c, seq, p);
    return wait_slot(lock, c, seq, what);
}

} // namespace

EXPORT ncclResult_t ncclGetVersion(int* version) {
    if (!version) return nccl_fail(ncclInvalidArgument, "ncclGetVersion: null");
    *version = 22703;  // NCCL_VERSION(2, 27, 3) = 2 * 10000 + 27 * 100 + 3
    return ncclSuccess;
}

// The id says which transport its communicator uses: cross-process (MPI) when CUDAEMU_NCCL_TRANSPORT=mpi, or by
// default when MPI is initialised in this process and MPI_COMM_WORLD has more than one process (the id is then
// meant to travel to the other processes); in-process otherwise, or when CUDAEMU_NCCL_TRANSPORT=inproc.
EXPORT ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
    if (!id) return nccl_fail(ncclInvalidArgument, "ncclGetUniqueId: null");
    const char* transport = getenv("CUDAEMU_NCCL_TRANSPORT");
    std::string choice = transport && *transport ? transport : "auto";
    if (choice != "auto" && choice != "inproc" && choice != "mpi")
        return nccl_fail(ncclInvalidArgument, "ncclGetUniqueId: CUDAEMU_NCCL_TRANSPORT=%s (expected inproc, mpi or auto)", choice.c_str());
    bool cross = false;
    if (choice != "inproc") {
        std::lock_guard<std::mutex> lock(g_mpi_mutex);
        int world_size = 0;
        std::string why = mpi_usable(&world_size);
        if (choice == "mpi" && !why.empty())
            return nccl_fail(ncclInvalidUsage, "ncclGetUniqueId: CUDAEMU_NCCL_TRANSPORT=mpi, but %s", why.c_str());
        cross = why.empty() && (choice == "mpi" || world_size > 1);
    }
    memset(id, 0, sizeof *id);
    snprintf(id->internal, sizeof id->internal, "%s pid %d id %llu", cross ? "cudaemu-nccl-mpi" : "cudaemu-nccl", (int)getpid(),
             g_id_counter.fetch_add(1));
    return ncclSuccess;
}

EXPORT ncclResult_t ncclCommInitAll(Comm** comms, int ndev, const int* devlist) {
    if (!comms) return nccl_fail(ncclInvalidArgument, "ncclCommInitAll: comms is null");
    if (ndev < 1) return nccl_fail(ncclInvalidArgument, "ncclCommInitAll: ndev = %d", ndev);
    if (!g_initialized) return nccl_fail(ncclUnhandledCudaError, "ncclCommInitAll: cuInit has not been called");
    for (int i = 0; i < ndev; i++) {
        int d = devlist ? devlist[i] : i;
        if (d < 0 || d >= g_device_count)
            return nccl_fail(ncclInvalidArgument, "ncclCommInitAll: devlist[%d] = %d, but there are %d emulated devices (CUDAEMU_DEVICES)", i, d, g_device_count);
        for (int j = 0; j < i; j++)
            if ((devlist ? devlist[j] : j) == d) return nccl_fail(ncclInvalidUsage, "ncclCommInitAll: device %d is listed twice", d);
    }
    std::lock_guard<std::mutex> lock(g_nccl_mutex);
    auto* q = new Clique();
    q->nranks = ndev;
    q->ranks.assign(ndev, nullptr);
    for (int i = 0; i < ndev; i++) {
        auto* c = new Comm();
        c->clique = q;
        c->rank = i;
        c->nranks = ndev;
        c->device = devlist ? devlist[i] : i;
        q->ranks[i] = c;
        g_comms.insert(c);
        comms[i] = c;
    }
    q->joined = q->refs = ndev;
    return ncclSuccess;
}

EXPORT ncclResult_t ncclCommInitRank(Comm** comm, int nranks, ncclUniqueId id, int rank) {
    if (!comm) return nccl_fail(ncclInvalidArgument, "ncclCommInitRank: comm is null");
    if (nranks < 1 || rank < 0 || rank >= nranks) return nccl_fail(ncclInvalidArgument, "ncclCommInitRank: rank %d of %d", rank, nranks);
    if (need_context()) return nccl_fail(ncclInvalidUsage, "ncclCommInitRank: no current CUDA context on this thread (bind the rank's device first)");
    std::string key(id.internal, strnlen(id.internal, sizeof id.internal));
    if (key.rfind("cudaemu-nccl", 0) != 0) return nccl_fail(ncclInvalidArgument, "ncclCommInitRank: the id was not made by ncclGetUniqueId");
    // One process per rank: run now, also inside a group (a process holds one rank of a cross-process communicator).
    if (key.rfind("cudaemu-nccl-mpi ", 0) == 0) return mpi_init_rank(comm, nranks, key, rank);
    std::unique_lock<std::mutex> lock(g_nccl_mutex);
    Clique*& q = g_pending_inits[key];
    if (!q) { q = new Clique(); q->nranks = nranks; q->ranks.assign(nranks, nullptr); }
    if (q->nranks != nranks)
        return nccl_fail(ncclInvalidUsage, "ncclCommInitRank: rank %d says %d ranks, an earlier rank of this id said %d", rank, nranks, q->nranks);
    if (q->ranks[rank]) return nccl_fail(ncclInvalidUsage, "ncclCommInitRank: rank %d joined this id twice", rank);
    auto* c = new Comm();
    c->clique = q;
    c->rank = rank;
    c->nranks = nranks;
    c->device = t_current->device;
    q->ranks[rank] = c;
    q->refs++;
    g_comms.insert(c);
    *comm = c;
    if (++q->joined == nranks) {
        g_pending_inits.erase(key);
        q->cv.notify_all();
    }
    if (t_group_depth > 0) {
        GroupItem item{c, 0, Post{}};
        item.init_wait = true;
        t_group.push_back(item);
        return ncclSuccess;
    }
    Clique* cq = c->clique;
    if (!cq->cv.wait_for(lock, std::chrono::milliseconds(nccl_timeout_ms()), [&] { return cq->joined == cq->nranks; }))
        return nccl_fail(ncclInvalidUsage, "ncclCommInitRank (rank %d): timed out after %ld ms: %d of %d ranks joined (from one thread, "
                         "call it for every rank inside ncclGroupStart/ncclGroupEnd)", rank, nccl_timeout_ms(), cq->joined, cq->nranks);
    return ncclSuccess;
}

EXPORT ncclResult_t ncclCommSplit(Comm* comm, int color, int key, Comm** newcomm, void* /*config*/) {
    if (!newcomm) return nccl_fail(ncclInvalidArgument, "ncclCommSplit: newcomm is null");
    if (color < NCCL_SPLIT_NOCOLOR) return nccl_fail(ncclInvalidArgument, "ncclCommSplit: color %d (must be >= 0, or NCCL_SPLIT_NOCOLOR)", color);
    *newcomm = nullptr;
    Post p;
    p.kind = COLL_SPLIT;
    p.color = color;
    p.key = key;
    p.newcomm = newcomm;
    return collective(comm, p, "ncclCommSplit");
}

EXPORT ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, int datatype, int op, Comm* comm, void* /*stream*/) {
    Post p;
    p.kind = COLL_ALLREDUCE;
    p.send = sendbuff;
    p.recv = recvbuff;
    p.count = count;
    p.type = datatype;
    p.op = op;
    return collective(comm, p, "ncclAllReduce");
}

EXPORT ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count, int datatype, int root, Comm* comm, void* /*stream*/) {
    Post p;
    p.kind = COLL_BROADCAST;
    p.send = sendbuff;
    p.recv = recvbuff;
    p.count = count;
    p.type = datatype;
    p.root = root;
    return collective(comm, p, "ncclBroadcast");
}

EXPORT ncclResult_t ncclGroupStart(void) {
    if (t_group_depth++ == 0) t_group_error = ncclSuccess;
    return ncclSuccess;
}

EXPORT ncclResult_t ncclGroupEnd(void) {
    if (t_group_depth == 0) return nccl_fail(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
    if (--t_group_depth > 0) return ncclSuccess;
    std::vector<GroupItem> items;
    items.swap(t_group);
    std::unique_lock<std::mutex> lock(g_nccl_mutex);
    for (auto& it : items)
        if (!it.init_wait && !it.mpi) post(it.comm, it.seq, it.post);
    ncclResult_t first = ncclSuccess;
    std::string first_message;
    // Cross-process collectives run now, in call order (every process issues them in the same order), without
    // the lock; the in-process ones just posted complete meanwhile on the threads that post last.
    lock.unlock();
    for (auto& it : items) {
        if (!it.mpi) continue;
        ncclResult_t r = first == ncclSuccess ? mpi_collective(it.comm, it.post, kind_name(it.post.kind)) : ncclSuccess;
        if (r != ncclSuccess) { first = r; first_message = t_message; }
    }
    lock.lock();
    for (auto& it : items) {
        if (it.mpi) continue;
        ncclResult_t r;
        if (it.init_wait) {
            Clique* q = it.comm->clique;
            r = q->cv.wait_for(lock, std::chrono::milliseconds(nccl_timeout_ms()), [&] { return q->joined == q->nranks; })
                    ? ncclSuccess
                    : nccl_fail(ncclInvalidUsage, "ncclCommInitRank (rank %d) in a group: timed out after %ld ms: %d of %d ranks joined", it.comm->rank,
                                nccl_timeout_ms(), q->joined, q->nranks);
        } else {
            r = wait_slot(lock, it.comm, it.seq, kind_name(it.post.kind));
        }
        if (r != ncclSuccess && first == ncclSuccess) { first = r; first_message = t_message; }
    }
    if (first != ncclSuccess) nccl_fail(first, "ncclGroupEnd: %s", first_message.c_str());
    return first;
}

namespace {
ncclResult_t release(void* comm, bool abort, const char* what) {
    std::lock_guard<std::mutex> lock(g_nccl_mutex);
    Comm* c = live(comm);
    if (!c) return nccl_fail(ncclInvalidArgument, "%s: comm %p is not a live communicator", what, comm);
    for (auto& it : t_group)  // a destroyed communicator's unposted group work is dropped
        if (it.comm == c) it.comm = nullptr;
    std::erase_if(t_group, [](const GroupItem& it) { return it.comm == nullptr; });
    if (c->mpi) {
        // The other processes cannot be woken from here: a rank waiting in a collective of this communicator on
        // another thread of this process fails at its next poll, and the remote ones end with the job (MPI_Abort).
        if (abort) c->mpi->aborted = true;
        std::shared_ptr<MpiLink> link = c->mpi;
        g_comms.erase(c);
        c->magic = 0;
        delete c;
        mpi_release(*link, abort);
        return ncclSuccess;
    }
    Clique* q = c->clique;
    if (abort && q->aborted.empty()) {
        q->aborted = "rank " + std::to_string(c->rank) + " aborted the communicator (ncclCommAbort)";
        q->cv.notify_all();
    }
    g_comms.erase(c);
    q->ranks[c->rank] = nullptr;
    c->magic = 0;
    delete c;
    if (--q->refs == 0) {
        for (auto it = g_pending_inits.begin(); it != g_pending_inits.end(); ++it)
            if (it->second == q) { g_pending_inits.erase(it); break; }
        delete q;
    }
    return ncclSuccess;
}
} // namespace

EXPORT ncclResult_t ncclCommDestroy(Comm* comm) { return comm ? release(comm, false, "ncclCommDestroy") : ncclSuccess; }
EXPORT ncclResult_t ncclCommAbort(Comm* comm) { return comm ? release(comm, true, "ncclCommAbort") : ncclSuccess; }

EXPORT ncclResult_t ncclCommCount(const Comm* comm, int* count) {
    std::lock_guard<std::mutex> lock(g_nccl_mutex);
    Comm* c = live((void*)comm);
    if (!c || !count) return nccl_fail(ncclInvalidArgument, "ncclCommCount: not a live communicator, or count is null");
    *count = c->nranks;
    return ncclSuccess;
}

EXPORT ncclResult_t ncclCommUserRank(const Comm* comm, int* rank) {
    std::lock_guard<std::mutex> lock(g_nccl_mutex);
    Comm* c = live((void*)comm);
    if (!c || !rank) return nccl_fail(ncclInvalidArgument, "ncclCommUserRank: not a live communicator, or rank is null");
    *rank = c->rank;
    return ncclSuccess;
}

EXPORT ncclResult_t ncclCommCuDevice(const Comm* comm, int* device) {
    std::lock_guard<std::mutex> lock(g_nccl_mutex);
    Comm* c = live((void*)comm);
    if (!c || !device) return nccl_fail(ncclInvalidArgument, "ncclCommCuDevice: not a live communicator, or device is null");
    *device = c->device;
    return ncclSuccess;
}

EXPORT ncclResult_t ncclCommGetAsyncError(Comm* comm, ncclResult_t* asyncError) {
    std::lock_guard<std::mutex> lock(g_nccl_mutex);
    Comm* c = live(comm);
    if (!c || !asyncError) return nccl_fail(ncclInvalidArgument, "ncclCommGetAsyncError: not a live communicator, or asyncError is null");
    *asyncError = c->async_error;
    return ncclSuccess;
}

EXPORT const char* ncclGetErrorString(ncclResult_t r) {
    switch (r) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
    case ncclSystemError: return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
    case ncclInternalError: return "internal error - please report this issue to the NCCL developers";
    case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case ncclInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
    }
}

// The detail of this thread's last failure (real NCCL >= 2.13 has the same entry point).
EXPORT const char* ncclGetLastError(Comm* /*comm*/) { return t_message; }

// Extension: the collective timeout in milliseconds (<= 0: back to CUDAEMU_NCCL_TIMEOUT_MS or 30 s).
EXPORT void cudaemuNcclSetTimeout(long ms) { g_nccl_timeout_ms = ms; }
