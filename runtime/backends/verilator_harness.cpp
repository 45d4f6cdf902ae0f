// neu10 Verilator harness: executes a host script on the Verilated pNPU (top: neu10_sim_top,
// the pNPU behind a register per host input, see runtime/backends/verilator.py).
//
// The script and the results are little-endian uint64 streams; every operation drives the
// host interface with exactly the same cycle-level handshakes as the pysim backend
// (runtime/backends/pysim.py), so results and cycle counts are identical.
//
//   neu10_sim SCRIPT RESULTS [VCD]   run a whole script, free-running (no host per cycle)
//   neu10_sim --interactive [VCD]    read one operation at a time on stdin, answer on stdout
//
// Operations: 1 csr_write addr value | 2 csr_read addr -> value
//             3 spad_write row w0..w(LANES-1) | 4 spad_read row -> LANES words
//             5 hbm_write line mask w0..w(LINE_WORDS-1) | 6 hbm_read line -> LINE_WORDS words
//             7 run max_cycles poll timeline -> waited busy [timeline, as for serve]
//             8 step cycles -> busy
//             13 hbm_load address count, then ceil(count / 2) words of two HBM words each
//                (low first): the back door into Storage, in no cycles
//             12 serve host_error n_contexts n_requests max_cycles poll timeline
//                  n_contexts x (doorbell completion capacity)
//                  n_requests x (context offset cycle after first_line n_lines)
//                -> mark waited busy, then per request: arrival error entry words...,
//                   then with timeline: n_events, n_events x (cycle engine activity)
//                (runtime/backends/script.py, Serve: the same algorithm as pysim's)
// HBM's lines live here (Storage), behind the pNPU's hbm_storage port: a synchronous
// memory the harness serves at every clock edge, holding only the pages a run writes.
// harness_config.h (generated per configuration) gives LANES, LINE_WORDS and the bit
// offsets of the request payloads. Port names are Amaranth's (csr__addr, ...), with each
// "__" escaped by Verilator as "___05F". The pNPU sees the host inputs as they were at the
// last pulse of host_strobe: settle() pulses it after the harness changed any of them,
// before the next clock edge or output read, so the pNPU sees them as if they were wired.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <deque>
#include <memory>
#include <unordered_map>
#include <vector>

#include "Vneu10_sim_top.h"
#include "harness_config.h"
#include "verilated.h"
#if NEU10_TRACE
#include "verilated_vcd_c.h"
#endif

namespace {

// --- bit access to ports of any width ---------------------------------------------------
template <typename T>
void put(T &port, int offset, int width, uint64_t value) {
    uint64_t mask = width >= 64 ? ~0ull : ((1ull << width) - 1);
    uint64_t current = static_cast<uint64_t>(port);
    current &= ~(mask << offset);
    current |= (value & mask) << offset;
    port = static_cast<T>(current);
}

template <std::size_t N>
void put(VlWide<N> &port, int offset, int width, uint64_t value) {
    for (int i = 0; i < width; i++) {
        int bit = offset + i;
        uint32_t one = 1u << (bit % 32);
        if ((value >> i) & 1) port[bit / 32] |= one;
        else port[bit / 32] &= ~one;
    }
}

template <typename T>
uint64_t get(const T &port, int offset, int width) {
    uint64_t mask = width >= 64 ? ~0ull : ((1ull << width) - 1);
    return (static_cast<uint64_t>(port) >> offset) & mask;
}

template <std::size_t N>
uint64_t get(const VlWide<N> &port, int offset, int width) {
    uint64_t value = 0;
    for (int i = 0; i < width; i++) {
        int bit = offset + i;
        value |= static_cast<uint64_t>((port[bit / 32] >> (bit % 32)) & 1) << i;
    }
    return value;
}

// One 32-bit word of a port that holds whole words (a line).
template <typename T>
uint32_t word_of(const T &port, int w) { return static_cast<uint32_t>(get(port, 32 * w, 32)); }

template <std::size_t N>
uint32_t word_of(const VlWide<N> &port, int w) { return port[w]; }

template <typename T>
void set_word(T &port, int w, uint32_t value) { put(port, 32 * w, 32, value); }

template <std::size_t N>
void set_word(VlWide<N> &port, int w, uint32_t value) { port[w] = value; }

// HBM's lines, all zero until written: pages of PAGE_LINES lines, allocated when first
// written, so a config's HBM can be gigabytes while the harness holds what a run touches.
class Storage {
  public:
    static constexpr uint64_t PAGE_LINES = 1024;

    // The words of line ``line``, or nullptr for a line never written (zeros).
    const uint32_t *find(uint64_t line) const {
        auto page = pages_.find(line / PAGE_LINES);
        if (page == pages_.end()) return nullptr;
        return page->second.get() + (line % PAGE_LINES) * LINE_WORDS;
    }

    uint32_t *line(uint64_t line) {
        auto &page = pages_[line / PAGE_LINES];
        if (!page) page = std::make_unique<uint32_t[]>(PAGE_LINES * LINE_WORDS);  // zeroed
        return page.get() + (line % PAGE_LINES) * LINE_WORDS;
    }

  private:
    std::unordered_map<uint64_t, std::unique_ptr<uint32_t[]>> pages_;
};

class Harness {
  public:
    explicit Harness(const char *vcd) {
        context_ = std::make_unique<VerilatedContext>();
        top_ = std::make_unique<Vneu10_sim_top>(context_.get());
#if NEU10_TRACE
        if (vcd) {
            context_->traceEverOn(true);
            trace_ = std::make_unique<VerilatedVcdC>();
            top_->trace(trace_.get(), 99);
            trace_->open(vcd);
        }
#else
        if (vcd) {
            std::fprintf(stderr, "neu10_sim: built without tracing; cannot write %s\n", vcd);
            std::exit(2);
        }
#endif
        top_->clk = 0;
        top_->host_strobe = 0;
        top_->eval();         // the first eval() records the clocks' values: no edge yet
        top_->rst = 1;        // one cycle of reset, as the pysim backend does
        touched();
        tick();
        top_->rst = 0;
        touched();
        settle();
    }

    ~Harness() {
#if NEU10_TRACE
        if (trace_) trace_->close();
#endif
        top_->final();
    }

    // Marks the host inputs as changed (call after writing any of them).
    void touched() { dirty_ = true; }

    // Hands changed host inputs to the pNPU; its outputs are then current.
    void settle() {
        if (!dirty_) return;
        top_->host_strobe = 1;
        top_->eval();
        top_->host_strobe = 0;
        top_->eval();
        dirty_ = false;
    }

    // One clock edge; inputs set before it are seen at that edge. HBM's storage takes the
    // controller's request as it was before the edge, as a synchronous memory does.
    void tick() {
        settle();
        if (tracing_) sample();
        uint64_t line = get(top_->hbm_storage___05Fline, 0, HBM_LINE_BITS);
        bool read = top_->hbm_storage___05Fread;
        bool write = false;
        uint32_t wdata[LINE_WORDS];
        bool enabled[LINE_WORDS];
        for (int w = 0; w < LINE_WORDS; w++) {
            enabled[w] = get(top_->hbm_storage___05Fwrite, w, 1);
            write |= enabled[w];
        }
        if (write)
            for (int w = 0; w < LINE_WORDS; w++) wdata[w] = word_of(top_->hbm_storage___05Fwdata, w);
        top_->clk = 1;
        top_->eval();
        if (write) {
            uint32_t *words = storage_.line(line);
            for (int w = 0; w < LINE_WORDS; w++)
                if (enabled[w]) words[w] = wdata[w];
        } else if (read) {
            const uint32_t *words = storage_.find(line);
            for (int w = 0; w < LINE_WORDS; w++)
                set_word(top_->hbm_storage___05Frdata, w, words ? words[w] : 0);
        }
        dump();
        top_->clk = 0;
        top_->eval();
        dump();
    }

    // Executes one operation starting at ops[i]; appends results; returns the next index.
    size_t execute(const std::vector<uint64_t> &ops, size_t i, std::vector<uint64_t> &out) {
        uint64_t kind = ops.at(i);
        switch (kind) {
        case 1:  // csr_write
            csr_write(ops.at(i + 1), ops.at(i + 2));
            return i + 3;
        case 2:  // csr_read
            out.push_back(csr_read(ops.at(i + 1)));
            return i + 2;
        case 3: {  // spad_write
            put(top_->spad_wr___05Freq___05Fpayload, SPAD_WR_ADDR, SPAD_ADDR_BITS, ops.at(i + 1));
            for (int l = 0; l < LANES; l++)
                put(top_->spad_wr___05Freq___05Fpayload, SPAD_WR_DATA + 32 * l, 32, ops.at(i + 2 + l));
            put(top_->spad_wr___05Freq___05Fpayload, SPAD_WR_MASK, LANES, ~0ull);
            top_->spad_wr___05Freq___05Fvalid = 1;
            touched();
            wait_for_ready([this] { return top_->spad_wr___05Freq___05Fready; });
            top_->spad_wr___05Freq___05Fvalid = 0;
            touched();
            return i + 2 + LANES;
        }
        case 4:  // spad_read
            top_->spad_rd___05Freq___05Fpayload = ops.at(i + 1);
            top_->spad_rd___05Freq___05Fvalid = 1;
            touched();
            wait_for_ready([this] { return top_->spad_rd___05Freq___05Fready; });
            top_->spad_rd___05Freq___05Fvalid = 0;
            touched();
            settle();
            for (int l = 0; l < LANES; l++) out.push_back(get(top_->spad_rd___05Fresp, 32 * l, 32));
            return i + 2;
        case 5:  // hbm_write
            put(top_->hbm___05Freq___05Fpayload, HBM_LINE, HBM_LINE_BITS, ops.at(i + 1));
            put(top_->hbm___05Freq___05Fpayload, HBM_WRITE, 1, 1);
            put(top_->hbm___05Freq___05Fpayload, HBM_MASK, LINE_WORDS, ops.at(i + 2));
            for (int w = 0; w < LINE_WORDS; w++)
                put(top_->hbm___05Freq___05Fpayload, HBM_DATA + 32 * w, 32, ops.at(i + 3 + w));
            top_->hbm___05Freq___05Fvalid = 1;
            touched();
            wait_for_ready([this] { return top_->hbm___05Freq___05Fready; });
            top_->hbm___05Freq___05Fvalid = 0;
            touched();
            return i + 3 + LINE_WORDS;
        case 6: {  // hbm_read
            uint64_t words[LINE_WORDS];
            hbm_read(ops.at(i + 1), words);
            out.insert(out.end(), words, words + LINE_WORDS);
            return i + 2;
        }
        case 7: {  // run: until no context runs, polling every `poll` cycles
            uint64_t max_cycles = ops.at(i + 1), poll = ops.at(i + 2), waited = 0;
            bool timeline = ops.at(i + 3);
            if (timeline) start_timeline(now());
            tick();  // the START write takes effect
            while (top_->busy && waited < max_cycles) {
                for (uint64_t c = 0; c < poll; c++) tick();
                waited += poll;
            }
            out.push_back(waited);
            out.push_back(top_->busy);
            if (timeline) end_timeline(out);
            return i + 4;
        }
        case 8: {  // step: a number of cycles, then report busy
            uint64_t cycles = ops.at(i + 1);
            for (uint64_t c = 0; c < cycles; c++) tick();
            out.push_back(top_->busy);
            return i + 2;
        }
        case 12:
            return serve(ops, i, out);
        case 13: {  // hbm_load
            uint64_t address = ops.at(i + 1), count = ops.at(i + 2);
            for (uint64_t k = 0; k < count; k++) {
                uint64_t pair = ops.at(i + 3 + k / 2);
                uint64_t word = address + k;
                storage_.line(word / LINE_WORDS)[word % LINE_WORDS] =
                    static_cast<uint32_t>(pair >> (32 * (k % 2)));
            }
            return i + 3 + (count + 1) / 2;
        }
        default:
            std::fprintf(stderr, "neu10_sim: unknown host operation %llu\n",
                         static_cast<unsigned long long>(kind));
            std::exit(2);
        }
    }

    static size_t op_length(uint64_t kind) {
        switch (kind) {
        case 1: return 3;
        case 2: case 4: case 6: case 8: return 2;
        case 3: return 2 + LANES;
        case 5: return 3 + LINE_WORDS;
        case 7: return 4;
        case 13: return 3;  // and the words its count gives
        default: return 0;
        }
    }

  private:
    static constexpr uint64_t NONE = ~0ull;

    void csr_write(uint64_t address, uint64_t value) {
        top_->csr___05Faddr = address;
        top_->csr___05Fwdata = value;
        top_->csr___05Fwe = 1;
        touched();
        tick();
        top_->csr___05Fwe = 0;
        touched();
    }

    // One HBM line read through the host port; the line is valid for one cycle: it is
    // sampled at that edge.
    void hbm_read(uint64_t line, uint64_t *words) {
        put(top_->hbm___05Freq___05Fpayload, HBM_LINE, HBM_LINE_BITS, line);
        put(top_->hbm___05Freq___05Fpayload, HBM_WRITE, 1, 0);
        top_->hbm___05Freq___05Fvalid = 1;
        touched();
        wait_for_ready([this] { return top_->hbm___05Freq___05Fready; });
        top_->hbm___05Freq___05Fvalid = 0;
        touched();
        for (;;) {
            settle();
            bool valid = top_->hbm___05Fresp_valid;
            for (int w = 0; w < LINE_WORDS; w++) words[w] = get(top_->hbm___05Fresp, 32 * w, 32);
            tick();
            if (valid) return;
        }
    }

    // ``count`` HBM lines from ``first``, pipelined: a request each cycle the port takes
    // one, the lines collected as they arrive (in order, hbm_latency later).
    void hbm_burst(uint64_t first, uint64_t count, uint64_t *words) {
        uint64_t issued = 0, got = 0;
        while (got < count) {
            if (issued < count) {
                put(top_->hbm___05Freq___05Fpayload, HBM_LINE, HBM_LINE_BITS, first + issued);
                put(top_->hbm___05Freq___05Fpayload, HBM_WRITE, 1, 0);
            }
            top_->hbm___05Freq___05Fvalid = issued < count;
            touched();
            settle();
            bool taken = issued < count && top_->hbm___05Freq___05Fready;
            if (top_->hbm___05Fresp_valid) {
                for (int w = 0; w < LINE_WORDS; w++)
                    words[got * LINE_WORDS + w] = get(top_->hbm___05Fresp, 32 * w, 32);
                got++;
            }
            tick();
            if (taken) issued++;
        }
        top_->hbm___05Freq___05Fvalid = 0;
        touched();
    }

    uint64_t now() {
        settle();
        return top_->cycle;
    }

    // Timeline (Serve with timeline): each engine's activity before this clock edge, kept
    // when it differs from the last one kept.
    void sample() {
        uint64_t cycle = top_->cycle - timeline_mark_;
        for (int e = 0; e < N_ENGINES; e++) {
            uint64_t value = get(top_->activity, e * ACTIVITY_BITS, ACTIVITY_BITS);
            if (value == last_activity_[e]) continue;
            last_activity_[e] = value;
            timeline_.insert(timeline_.end(), {cycle, static_cast<uint64_t>(e), value});
        }
    }

    // Serve (op 12): a host driver's loop, free-running. See runtime/backends/script.py.
    size_t serve(const std::vector<uint64_t> &ops, size_t i, std::vector<uint64_t> &out) {
        uint64_t host_error = ops.at(i + 1), n_ctx = ops.at(i + 2), n_req = ops.at(i + 3);
        uint64_t max_cycles = ops.at(i + 4), poll = ops.at(i + 5), timeline = ops.at(i + 6);
        size_t at = i + 7;
        struct Ctx {
            uint64_t doorbell, completion, capacity;
            std::deque<uint64_t> waiting, rung;   // arrived at the host; rung, not completed
            bool dead = false;                    // it faulted: it takes no request
        };
        struct Req {
            uint64_t ctx, offset, cycle, after, first, lines;
            uint64_t arrival = NONE, error = 0, entry = 0;
            std::vector<uint64_t> words;
        };
        std::vector<Ctx> ctxs(n_ctx);
        for (auto &c : ctxs) {
            c.doorbell = ops.at(at);
            c.completion = ops.at(at + 1);
            c.capacity = ops.at(at + 2);
            at += 3;
        }
        std::vector<Req> reqs(n_req);
        std::vector<std::vector<uint64_t>> followers(n_req);
        std::vector<uint64_t> timed;
        for (uint64_t r = 0; r < n_req; r++) {
            Req &q = reqs[r];
            q.ctx = ops.at(at); q.offset = ops.at(at + 1); q.cycle = ops.at(at + 2);
            q.after = ops.at(at + 3); q.first = ops.at(at + 4); q.lines = ops.at(at + 5);
            q.words.assign(q.lines * LINE_WORDS, 0);
            at += 6;
            if (q.after == NONE) timed.push_back(r); else followers[q.after].push_back(r);
        }
        uint64_t mark = now(), resolved = 0, next = 0;   // next: the next timed request
        if (timeline) start_timeline(mark);
        for (;;) {
            uint64_t t = now() - mark;
            while (next < timed.size() && reqs[timed[next]].cycle <= t) {
                Req &q = reqs[timed[next++]];
                q.arrival = q.cycle;
                ctxs[q.ctx].waiting.push_back(&q - reqs.data());
            }
            for (auto &c : ctxs) {
                while (!c.waiting.empty() && (c.dead || c.rung.size() < c.capacity)) {
                    uint64_t r = c.waiting.front();
                    c.waiting.pop_front();
                    csr_write(c.doorbell, reqs[r].offset);
                    uint64_t error = csr_read(host_error);
                    if (error) {
                        csr_write(host_error, 0);
                        reqs[r].error = error & 0xFF;
                        drop(followers, r, resolved);
                    } else {
                        c.rung.push_back(r);
                    }
                }
            }
            for (auto &c : ctxs) {
                while (!c.rung.empty()) {
                    uint64_t value = csr_read(c.completion);
                    if (!(value >> 63)) break;
                    uint64_t r = c.rung.front();
                    c.rung.pop_front();
                    Req &q = reqs[r];
                    q.entry = value;
                    hbm_burst(q.first, q.lines, q.words.data());
                    resolved++;
                    if (value >> 62 & 1) {
                        // The context faulted: what it still holds never runs.
                        c.dead = true;
                        for (uint64_t held : c.rung) drop(followers, held, resolved);
                        c.rung.clear();
                        drop_followers(followers, r, resolved);
                        break;
                    }
                    uint64_t arrived = now() - mark;
                    for (uint64_t f : followers[r]) {
                        reqs[f].arrival = arrived;
                        ctxs[reqs[f].ctx].waiting.push_back(f);
                    }
                }
            }
            t = now() - mark;
            if (resolved == n_req || t >= max_cycles) break;
            uint64_t step = poll;
            if (next < timed.size() && reqs[timed[next]].cycle > t)
                step = std::min(step, reqs[timed[next]].cycle - t);
            for (uint64_t c = 0; c < step; c++) tick();
        }
        out.push_back(mark);
        out.push_back(now() - mark);
        out.push_back(top_->busy);
        for (auto &q : reqs) {
            out.push_back(q.arrival);
            out.push_back(q.error);
            out.push_back(q.entry);
            out.insert(out.end(), q.words.begin(), q.words.end());
        }
        if (timeline) end_timeline(out);
        return at;
    }

    // Record a timeline from now on, its cycles counted from `mark`.
    void start_timeline(uint64_t mark) {
        tracing_ = true;
        timeline_mark_ = mark;
        timeline_.clear();
        last_activity_.assign(N_ENGINES, NONE);
    }

    // Stop recording; the results get n_events, then (cycle engine activity) per event.
    void end_timeline(std::vector<uint64_t> &out) {
        tracing_ = false;
        out.push_back(timeline_.size() / 3);
        out.insert(out.end(), timeline_.begin(), timeline_.end());
    }

    // A request that will never complete (refused, or held by a faulted context), and
    // the closed-loop requests that would have arrived when it completed.
    static void drop(const std::vector<std::vector<uint64_t>> &followers, uint64_t r,
                     uint64_t &resolved) {
        resolved++;
        drop_followers(followers, r, resolved);
    }

    static void drop_followers(const std::vector<std::vector<uint64_t>> &followers, uint64_t r,
                               uint64_t &resolved) {
        for (uint64_t f : followers[r]) drop(followers, f, resolved);
    }

    // One register read: the value is there after the clock edge.
    uint64_t csr_read(uint64_t address) {
        top_->csr___05Faddr = address;
        top_->csr___05Fre = 1;
        touched();
        tick();
        top_->csr___05Fre = 0;
        touched();
        settle();
        return top_->csr___05Frdata;
    }

    template <typename Ready>
    void wait_for_ready(Ready ready) {
        for (;;) {
            settle();
            bool granted = ready();
            tick();
            if (granted) return;
        }
    }

    void dump() {
#if NEU10_TRACE
        if (trace_) trace_->dump(context_->time());
#endif
        context_->timeInc(1);
    }

    std::unique_ptr<VerilatedContext> context_;
    std::unique_ptr<Vneu10_sim_top> top_;
    Storage storage_;
    bool dirty_ = true;    // a host input changed since the last host_strobe
    bool tracing_ = false;  // recording a timeline (sample() before each edge)
    uint64_t timeline_mark_ = 0;
    std::vector<uint64_t> timeline_, last_activity_;
    uint64_t mark_ = 0;    // the cycle counter at the last `mark`
#if NEU10_TRACE
    std::unique_ptr<VerilatedVcdC> trace_;
#endif
};

std::vector<uint64_t> read_words(const char *path) {
    std::FILE *file = std::fopen(path, "rb");
    if (!file) {
        std::fprintf(stderr, "neu10_sim: cannot open %s\n", path);
        std::exit(2);
    }
    std::vector<uint64_t> words;
    uint64_t word;
    while (std::fread(&word, sizeof word, 1, file) == 1) words.push_back(word);
    std::fclose(file);
    return words;
}

}  // namespace

int main(int argc, char **argv) {
    if (argc >= 2 && std::strcmp(argv[1], "--interactive") == 0) {
        Harness harness(argc >= 3 ? argv[2] : nullptr);
        std::vector<uint64_t> op, out;
        uint64_t word;
        while (std::fread(&word, sizeof word, 1, stdin) == 1) {
            size_t length = Harness::op_length(word);
            if (!length) {
                std::fprintf(stderr, "neu10_sim: unknown host operation %llu\n",
                             static_cast<unsigned long long>(word));
                return 2;
            }
            op.assign(1, word);
            for (size_t k = 1; k < length; k++) {
                if (std::fread(&word, sizeof word, 1, stdin) != 1) return 2;
                op.push_back(word);
                if (op[0] == 13 && k == 2) length += (word + 1) / 2;  // hbm_load's words
            }
            out.clear();
            harness.execute(op, 0, out);
            uint64_t count = out.size();
            std::fwrite(&count, sizeof count, 1, stdout);
            if (count) std::fwrite(out.data(), sizeof(uint64_t), out.size(), stdout);
            std::fflush(stdout);
        }
        return 0;
    }
    if (argc < 3) {
        std::fprintf(stderr, "usage: neu10_sim SCRIPT RESULTS [VCD] | --interactive [VCD]\n");
        return 2;
    }
    std::vector<uint64_t> ops = read_words(argv[1]), out;
    {
        Harness harness(argc >= 4 ? argv[3] : nullptr);
        for (size_t i = 0; i < ops.size();) i = harness.execute(ops, i, out);
    }
    std::FILE *file = std::fopen(argv[2], "wb");
    if (!file) {
        std::fprintf(stderr, "neu10_sim: cannot write %s\n", argv[2]);
        return 2;
    }
    std::fwrite(out.data(), sizeof(uint64_t), out.size(), file);
    std::fclose(file);
    return 0;
}
