"""Banked scratchpad SRAM shared by every engine, behind per-bank round-robin arbiters."""

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .arbitration import round_robin
from .sram import SRAM
from .ports import SpadReadSignature, SpadWriteSignature

__all__ = ["Scratchpad"]


class Scratchpad(wiring.Component):
    """``spad_banks`` banks of ``spad_rows / spad_banks`` rows; row r lives in bank r % spad_banks.

    Each bank has ``read_ports`` read ports and one write port (with a write enable per
    lane). Every cycle, each bank grants its read ports to up to ``read_ports`` of the
    clients that ask for it and its write port to one, in rotating priority; the others
    stall (their request stays pending) and the bank counts a conflict cycle. A read
    returns the row as it was before any write in the same cycle.

    A client marked ``rd_background``/``wr_background`` (an engine running a µTOp on an
    engine it borrowed under harvest) is served only when no foreground client wants the
    same port, unless it has waited ``background_age`` cycles: then it competes as a
    foreground client, so it is never starved.
    """

    #: Cycles a background request waits before it competes as a foreground one.
    background_age = 16

    def __init__(self, config, *, n_read, n_write, read_ports=2):
        if n_read < 1 or n_write < 1:
            raise ValueError(f"a scratchpad needs at least one read and one write client, not "
                             f"n_read={n_read!r}, n_write={n_write!r}")
        if read_ports < 1:
            raise ValueError(f"read_ports must be at least 1, not {read_ports!r}")
        self.config = config
        self.n_read, self.n_write, self.read_ports = n_read, n_write, read_ports
        banks = config.spad_banks
        #: The bank memories; row r is ``banks[r % spad_banks].data[r // spad_banks]``.
        self.banks = [SRAM(width=32 * config.ve_lanes, depth=config.spad_rows // banks,
                           granularity=32, read_ports=("sync",) * read_ports)
                      for _ in range(banks)]
        super().__init__({
            "rd": In(SpadReadSignature(config)).array(n_read),
            "wr": In(SpadWriteSignature(config)).array(n_write),
            "rd_background": In(n_read),
            "wr_background": In(n_write),
            "read_conflicts": Out(32).array(banks),
            "write_conflicts": Out(32).array(banks),
        })

    def row(self, address):
        """The memory cell of physical row ``address`` (for testbenches and back-door access)."""
        banks = self.config.spad_banks
        return self.banks[address % banks].data[address // banks]

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        n_banks, lanes = cfg.spad_banks, cfg.ve_lanes
        bank_bits = (n_banks - 1).bit_length()
        depth = cfg.spad_rows // n_banks

        # Decode every client's bank and in-bank index once.
        def decode(address, name):
            bank = Signal(range(n_banks), name=f"{name}_bank")
            index = Signal(range(depth), name=f"{name}_index")
            m.d.comb += [bank.eq(address[:bank_bits] if bank_bits else 0),
                         index.eq(address[bank_bits:])]
            return bank, index

        read_decoded = [decode(port.req.payload, f"rd{c}") for c, port in enumerate(self.rd)]
        write_decoded = [decode(port.req.payload.addr, f"wr{c}") for c, port in enumerate(self.wr)]

        def background(clients, flags, kind):
            """Background clients that have not waited too long (a mask)."""
            mask = []
            for c, client in enumerate(clients):
                waited = Signal(range(self.background_age + 1), name=f"{kind}{c}_waited")
                with m.If(client.req.valid & ~client.req.ready):
                    m.d.sync += waited.eq(Mux(waited == self.background_age, waited, waited + 1))
                with m.Else():
                    m.d.sync += waited.eq(0)
                mask.append(flags[c] & (waited != self.background_age))
            result = Signal(len(clients), name=f"{kind}_background_now")
            m.d.comb += result.eq(Cat(mask))
            return result

        def prefer_foreground(requests, background_now):
            """Requests to arbitrate among: the foreground ones if there are any."""
            foreground = requests & ~background_now
            return Mux(foreground.any(), foreground, requests)

        read_background = background(self.rd, self.rd_background, "rd")
        write_background = background(self.wr, self.wr_background, "wr")
        read_pointer = Signal(range(self.n_read))
        write_pointer = Signal(range(self.n_write))
        m.d.sync += [
            read_pointer.eq(Mux(read_pointer == self.n_read - 1, 0, read_pointer + 1)),
            write_pointer.eq(Mux(write_pointer == self.n_write - 1, 0, write_pointer + 1)),
        ]

        read_granted = [[] for _ in range(self.n_read)]   # (bank port data, grant bit) per client
        write_grants = []                                 # one-hot write grant per bank
        for b in range(n_banks):
            bank = self.banks[b]
            m.submodules[f"bank{b}"] = bank
            write_port = bank.write
            read_ports = bank.read

            # Read ports: each takes the first requester the earlier ports left.
            remaining = Signal(self.n_read, name=f"bank{b}_read_wants")
            m.d.comb += remaining.eq(Cat((port.req.valid & (read_decoded[c][0] == b))
                                         for c, port in enumerate(self.rd)))
            for p, read_port in enumerate(read_ports):
                grant = round_robin(m, prefer_foreground(remaining, read_background),
                                    read_pointer, self.n_read, f"bank{b}_rd{p}")
                address = 0
                for c in range(self.n_read):
                    address = address | Mux(grant[c], read_decoded[c][1], 0)
                    read_granted[c].append((read_port.data, grant[c]))
                m.d.comb += read_port.addr.eq(address)
                left = Signal(self.n_read, name=f"bank{b}_read_left{p}")
                m.d.comb += left.eq(remaining & ~grant)
                remaining = left
            with m.If(remaining.any()):
                m.d.sync += self.read_conflicts[b].eq(self.read_conflicts[b] + 1)

            # Write port.
            wants = Signal(self.n_write, name=f"bank{b}_write_wants")
            m.d.comb += wants.eq(Cat((port.req.valid & (write_decoded[c][0] == b))
                                     for c, port in enumerate(self.wr)))
            grant = round_robin(m, prefer_foreground(wants, write_background), write_pointer,
                                self.n_write, f"bank{b}_wr")
            address = data = enable = 0
            for c, client in enumerate(self.wr):
                payload = client.req.payload
                address = address | Mux(grant[c], write_decoded[c][1], 0)
                data = data | Mux(grant[c], payload.data.as_value(), 0)
                enable = enable | Mux(grant[c], payload.mask, 0)
            m.d.comb += [write_port.addr.eq(address), write_port.data.eq(data),
                         write_port.en.eq(enable)]
            with m.If((wants & ~grant).any()):
                m.d.sync += self.write_conflicts[b].eq(self.write_conflicts[b] + 1)
            write_grants.append(grant)

        # Ready when any bank port granted the client; the response follows one cycle later.
        for c, client in enumerate(self.rd):
            grants = Cat(g for _, g in read_granted[c])
            selected = Signal(len(grants), name=f"rd{c}_selected")
            m.d.comb += client.req.ready.eq(grants.any())
            m.d.sync += [selected.eq(grants), client.resp_valid.eq(grants.any())]
            response = 0
            for i, (port_data, _) in enumerate(read_granted[c]):
                response = response | Mux(selected[i], port_data, 0)
            m.d.comb += client.resp.eq(response)
        for c, client in enumerate(self.wr):
            m.d.comb += client.req.ready.eq(Cat(g[c] for g in write_grants).any())
        return m
