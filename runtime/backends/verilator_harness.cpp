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
//             7 run max_cycles poll -> waited busy | 8 step cycles -> busy
//             11 mark -> cycle (remember the pNPU's cycle counter now)
//             9 until t (clock until the cycle counter reads mark + t; no-op if past)
//             10 drain addr -> n v1..vn (read a queue register until bit 63 is clear)
// harness_config.h (generated per configuration) gives LANES, LINE_WORDS and the bit
// offsets of the request payloads. Port names are Amaranth's (csr__addr, ...), with each
// "__" escaped by Verilator as "___05F". The pNPU sees the host inputs as they were at the
// last pulse of host_strobe: settle() pulses it after the harness changed any of them,
// before the next clock edge or output read, so the pNPU sees them as if they were wired.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
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

    // One clock edge; inputs set before it are seen at that edge.
    void tick() {
        settle();
        top_->clk = 1;
        top_->eval();
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
            top_->csr___05Faddr = ops.at(i + 1);
            top_->csr___05Fwdata = ops.at(i + 2);
            top_->csr___05Fwe = 1;
            touched();
            tick();
            top_->csr___05Fwe = 0;
            touched();
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
        case 5:    // hbm_write
        case 6: {  // hbm_read
            bool write = kind == 5;
            put(top_->hbm___05Freq___05Fpayload, HBM_LINE, HBM_LINE_BITS, ops.at(i + 1));
            put(top_->hbm___05Freq___05Fpayload, HBM_WRITE, 1, write);
            if (write) {
                put(top_->hbm___05Freq___05Fpayload, HBM_MASK, LINE_WORDS, ops.at(i + 2));
                for (int w = 0; w < LINE_WORDS; w++)
                    put(top_->hbm___05Freq___05Fpayload, HBM_DATA + 32 * w, 32, ops.at(i + 3 + w));
            }
            top_->hbm___05Freq___05Fvalid = 1;
            touched();
            wait_for_ready([this] { return top_->hbm___05Freq___05Fready; });
            top_->hbm___05Freq___05Fvalid = 0;
            touched();
            if (!write) {
                // The line is valid for one cycle: sample it at that edge.
                for (;;) {
                    settle();
                    bool valid = top_->hbm___05Fresp_valid;
                    uint64_t words[LINE_WORDS];
                    for (int w = 0; w < LINE_WORDS; w++) words[w] = get(top_->hbm___05Fresp, 32 * w, 32);
                    tick();
                    if (valid) {
                        for (int w = 0; w < LINE_WORDS; w++) out.push_back(words[w]);
                        break;
                    }
                }
                return i + 2;
            }
            return i + 3 + LINE_WORDS;
        }
        case 7: {  // run: until no context runs, polling every `poll` cycles
            uint64_t max_cycles = ops.at(i + 1), poll = ops.at(i + 2), waited = 0;
            tick();  // the START write takes effect
            while (top_->busy && waited < max_cycles) {
                for (uint64_t c = 0; c < poll; c++) tick();
                waited += poll;
            }
            out.push_back(waited);
            out.push_back(top_->busy);
            return i + 3;
        }
        case 8: {  // step: a number of cycles, then report busy
            uint64_t cycles = ops.at(i + 1);
            for (uint64_t c = 0; c < cycles; c++) tick();
            out.push_back(top_->busy);
            return i + 2;
        }
        case 11:  // mark: the cycle counter now, the origin of `until`
            settle();
            mark_ = top_->cycle;
            out.push_back(mark_);
            return i + 1;
        case 9: {  // until: clock until the cycle counter reads mark + t
            uint64_t target = mark_ + ops.at(i + 1);
            settle();
            while (top_->cycle < target) tick();
            return i + 2;
        }
        case 10: {  // drain: read a queue register until an entry without bit 63
            std::vector<uint64_t> entries;
            for (uint64_t value; (value = csr_read(ops.at(i + 1))) >> 63;) entries.push_back(value);
            out.push_back(entries.size());
            out.insert(out.end(), entries.begin(), entries.end());
            return i + 2;
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
        case 2: case 4: case 6: case 8: case 9: case 10: return 2;
        case 11: return 1;
        case 3: return 2 + LANES;
        case 5: return 3 + LINE_WORDS;
        case 7: return 3;
        default: return 0;
        }
    }

  private:
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
    bool dirty_ = true;    // a host input changed since the last host_strobe
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
