/*
 * events-pv32.S - lab guest: event channels, upcalls and masking, x86_32 PAE PV.
 *
 * The 32-bit twin of events-pv64.S: the same steps and check names. It maps
 * shared_info, registers its event callback (set_callbacks with a code
 * selector and an address for each), makes itself a loopback interdomain
 * channel, an IPI and a VIRQ, and checks what Xen does with them:
 *
 *   - EVTCHNOP_status of every kind of port (and of the console's port);
 *   - with evtchn_upcall_mask set, a send only marks the port pending, sets
 *     its evtchn_pending_sel bit and evtchn_upcall_pending;
 *   - once the guest clears the mask and makes any hypercall, Xen makes the
 *     upcall: ring 1 to ring 1, a bounce frame of EIP, CS (saved mask in bits
 *     16-23), EFLAGS right below the stack pointer, events masked on entry;
 *     the handler scans the two levels (32-bit words: 1024 ports) and returns
 *     with the iret hypercall, which restores the mask from EFLAGS.IF;
 *   - a send to a masked port leaves the selector alone; EVTCHNOP_unmask of
 *     that pending port re-raises it;
 *   - close, and the errors for bad ports, bind_pirq and the FIFO ABI.
 *
 * Each step prints "CHECK <name>: ok" or "CHECK <name>: FAIL <what> <got>,
 * want <want>"; then "RESULT: PASS" or "RESULT: FAIL", and the guest powers
 * itself off. The expected values are those of real Xen (but for the FIFO
 * ABI, which xendbg does not offer: step 16).
 *
 * Entry state (Xen): ring 1, CS = 0xe019, ESI = start_info,
 * evtchn_upcall_mask = 1. Registers in main: EBP = start_info. Events stay
 * masked except inside the short windows that test delivery.
 */
#include "xen-pv32.inc"

#define UNUSED_PORT     20      /* never allocated; inside the first bucket of ports
                                   Xen creates for every domain, so it is "valid" but free */
#define SEEN_PORTS      32      /* the upcall handler counts deliveries of ports below this */
#define UPCALL_STORM    8       /* more upcalls than this in one window: stop them */
#define BAD_PIRQ        1       /* a PIRQ number below nr_pirqs that a domU may not bind */
#define PTE_SHINFO      (_PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY)

/* ---- Xen ELF notes ------------------------------------------------------------ */
    LAB_NOTES

    HYPERCALL_PAGE_DEFINE
    LAB_LIB_DEFINE

/* ---- helpers for this guest ------------------------------------------------- */

/* bit_of BASE, PORT: EAX = bit PORT of the bitmap at shared_info+BASE (0 or 1).
 * PORT is a register or memory operand; clobbers EAX and ECX. */
.macro bit_of base, port
    mov \port, %ecx
    bt %ecx, shinfo_page+\base
    setc %al
    movzbl %al, %eax
.endm

/* sel_bit_of PORT: EAX = the evtchn_pending_sel bit of PORT's word. */
.macro sel_bit_of port
    mov \port, %ecx
    shr $EVTCHN_WORD_SHIFT, %ecx
    bt %ecx, shinfo_page+VCPU_pending_sel
    setc %al
    movzbl %al, %eax
.endm

/* seen_of PORT: EAX = how many times the upcall handler saw PORT. */
.macro seen_of port
    mov \port, %ecx
    movzbl seen(%ecx), %eax
.endm

/* port_op CMD, PORT: EVTCHNOP_CMD on {u32 port} (send, close, unmask). EAX = rc. */
.macro port_op cmd, port
    mov \port, %eax
    mov %eax, port_arg
    mov $\cmd, %eax
    call evtchn_port_op
.endm

/* check_status NAME, PORT, STATUS: EVTCHNOP_status of PORT returns 0 with
 * status STATUS and vCPU 0; the answer stays in es_buf. */
.macro check_status name, port, status
    mov \port, %eax
    mov $\status, %edx
    call status_check
    test %eax, %eax
    jnz .Lcs_bad\@
    check_ok \name
    jmp .Lcs_done\@
.Lcs_bad\@:
    check_fail_start \name, "EVTCHNOP_status"
    call status_explain
.Lcs_done\@:
.endm

/* ---- entry ------------------------------------------------------------------- */
    LAB_START

    .text
    .type main, @function
main:
    mov start_info_va, %ebp
    print_lit "events-pv32: event channels, upcalls and masking\n"

/* Step 1: map shared_info (its machine address is in start_info) over a page
 * of our .bss with update_va_mapping(va, pte_lo, pte_hi, flags). Xen lets a
 * domain map its shared_info page read-write. At boot events are masked. */
step1_shared_info:
    MAP_SHARED_INFO %ebp, PTE_SHINFO
    CHECK_SHARED_INFO_MAPPED
    movzbl shinfo_page+VCPU_upcall_mask, %eax
    check_eq boot_masked, %eax, $1, "vcpu_info[0].evtchn_upcall_mask at entry is"

/* Step 2: set_callbacks(event_cs, event_eip, failsafe_cs, failsafe_eip). */
step2_callbacks:
    SET_CALLBACKS evtchn_upcall, evtchn_failsafe
    check_eq set_callbacks, %eax, $0, "set_callbacks returned"

/* Step 3: the console's port was connected by the toolstack to the console
 * backend in dom0: interdomain, remote domain 0. */
step3_console_port:
    mov SI_console_evtchn(%ebp), %eax
    mov %eax, console_port
    check_status status_console, console_port, EVTCHNSTAT_interdomain
    movzwl es_buf+ES_u_dom, %eax
    check_eq status_console_dom, %eax, $0, "the console port's remote domain is"

/* Step 4: alloc_unbound(dom = DOMID_SELF, remote_dom = DOMID_SELF): a port A
 * that our own domain may bind to. Xen records the caller's real domid. */
step4_alloc_unbound:
    movw $DOMID_SELF, au_arg
    movw $DOMID_SELF, au_arg+2
    movl $0, au_arg+4
    mov $EVTCHNOP_alloc_unbound, %ebx
    mov $au_arg, %ecx
    HYPERCALL __HYPERVISOR_event_channel_op
    check_eq alloc_unbound, %eax, $0, "EVTCHNOP_alloc_unbound returned"
    mov au_arg+4, %eax
    mov %eax, port_a
    check_status status_unbound, port_a, EVTCHNSTAT_unbound
    movzwl es_buf+ES_u_dom, %eax
    mov %eax, my_domid
    cmp $DOMID_SELF, %eax
    je 1f
    test %eax, %eax
    jz 1f
    check_ok unbound_remote_domid
    jmp step5_bind_interdomain
1:  check_fail_val unbound_remote_domid, my_domid, "the unbound port's remote domain is not our domid but"

/* Step 5: bind_interdomain(remote_dom = DOMID_SELF, remote_port = A) gives a
 * port B. Xen sets B pending at once, in case the remote end was signalled
 * while it was unbound. */
step5_bind_interdomain:
    movw $DOMID_SELF, bi_arg
    mov port_a, %eax
    mov %eax, bi_arg+4
    movl $0, bi_arg+8
    mov $EVTCHNOP_bind_interdomain, %ebx
    mov $bi_arg, %ecx
    HYPERCALL __HYPERVISOR_event_channel_op
    check_eq bind_interdomain, %eax, $0, "EVTCHNOP_bind_interdomain returned"
    mov bi_arg+8, %eax
    mov %eax, port_b
    bit_of SHINFO_evtchn_pending, port_b
    check_eq bind_interdomain_pending, %eax, $1, "pending bit of the new local port after bind is"
    check_status status_interdomain, port_b, EVTCHNSTAT_interdomain
    movzwl es_buf+ES_u_dom, %eax
    check_eq status_interdomain_dom, %eax, my_domid, "interdomain remote domain of B is"
    check_eq status_interdomain_port, es_buf+ES_u_port, port_a, "interdomain remote port of B is"
    check_status status_interdomain_peer, port_a, EVTCHNSTAT_interdomain
    check_eq status_interdomain_peer_port, es_buf+ES_u_port, port_b, "interdomain remote port of A is"

/* Step 6: bind_ipi(vCPU 0): a port C that signals ourselves. */
step6_bind_ipi:
    movl $0, ipi_arg
    movl $0, ipi_arg+4
    mov $EVTCHNOP_bind_ipi, %ebx
    mov $ipi_arg, %ecx
    HYPERCALL __HYPERVISOR_event_channel_op
    check_eq bind_ipi, %eax, $0, "EVTCHNOP_bind_ipi returned"
    mov ipi_arg+4, %eax
    mov %eax, port_c
    check_status status_ipi, port_c, EVTCHNSTAT_ipi

/* Step 7: bind_virq(VIRQ_DEBUG, vCPU 0): a port D. A second bind of the same
 * VIRQ on the same vCPU is -EEXIST. */
step7_bind_virq:
    BIND_VIRQ VIRQ_DEBUG
    check_eq bind_virq, %eax, $0, "EVTCHNOP_bind_virq(VIRQ_DEBUG) returned"
    mov virq_arg+8, %eax
    mov %eax, port_d
    check_status status_virq, port_d, EVTCHNSTAT_virq
    check_eq status_virq_number, es_buf+ES_u_virq, $VIRQ_DEBUG, "the VIRQ of D is"
    mov $EVTCHNOP_bind_virq, %ebx
    mov $virq_arg, %ecx
    HYPERCALL __HYPERVISOR_event_channel_op
    check_eq bind_virq_twice, %eax, $-EEXIST, "a second EVTCHNOP_bind_virq(VIRQ_DEBUG) returned"

/* Step 8: delivery while the vCPU is masked: send on B (raises A) and on C.
 * Both pending, their word's selector bit and evtchn_upcall_pending set, no
 * upcall. */
step8_masked_delivery:
    call reset_events
    port_op EVTCHNOP_send, port_b
    check_eq send_interdomain, %eax, $0, "EVTCHNOP_send(B) returned"
    port_op EVTCHNOP_send, port_c
    check_eq send_ipi, %eax, $0, "EVTCHNOP_send(C) returned"
    bit_of SHINFO_evtchn_pending, port_a
    check_eq masked_pending_remote, %eax, $1, "pending bit of A (the remote end of B) is"
    bit_of SHINFO_evtchn_pending, port_c
    check_eq masked_pending_ipi, %eax, $1, "pending bit of C is"
    sel_bit_of port_a
    check_eq masked_selector, %eax, $1, "evtchn_pending_sel bit of A's word is"
    movzbl shinfo_page+VCPU_upcall_pending, %eax
    check_eq masked_upcall_pending, %eax, $1, "evtchn_upcall_pending is"
    check_eq masked_no_upcall, upcall_count, $0, "upcalls made while masked:"

/* Step 9: clear the mask and make a hypercall: on its way back Xen delivers
 * the pending events. The handler sees A and C; its iret returns here with
 * the hypercall's result intact and events unmasked again. */
step9_upcall:
    mov $XENVER_version, %ebx
    xor %ecx, %ecx
    HYPERCALL __HYPERVISOR_xen_version
    mov %eax, version
    movl $0, upcall_count
    lea -BF_SIZE(%esp), %eax
    mov %eax, upcall_esp_want
    movb $0, shinfo_page+VCPU_upcall_mask
    mov $XENVER_version, %ebx
    xor %ecx, %ecx
upcall_hypercall:
    HYPERCALL_DIRECT __HYPERVISOR_xen_version
upcall_hypercall_return:
    mov %eax, upcall_result
    movzbl shinfo_page+VCPU_upcall_mask, %eax
    mov %eax, mask_after_iret
    movb $1, shinfo_page+VCPU_upcall_mask
upcall_verify:
    check_eq upcall, upcall_count, $1, "upcalls made after unmasking:"
    seen_of port_a
    check_eq upcall_sees_remote, %eax, $1, "the handler's scan found A (times):"
    seen_of port_c
    check_eq upcall_sees_ipi, %eax, $1, "the handler's scan found C (times):"
    check_eq upcall_masked_on_entry, upcall_mask_on_entry, $1, "evtchn_upcall_mask in the handler is"
    check_eq upcall_frame_rip, upcall_frame+BF_eip, $upcall_hypercall_return, "frame EIP (want the instruction after int $0x82) is"
    movzwl upcall_frame+BF_cs, %eax
    check_eq upcall_frame_cs, %eax, $FLAT_KERNEL_CS, "frame CS selector is"
    movzbl upcall_frame+BF_cs+2, %eax
    check_eq upcall_frame_saved_mask, %eax, $0, "saved upcall mask (frame CS bits 16-23) is"
    mov upcall_frame+BF_eflags, %eax
    and $EFLAGS_IF, %eax
    check_eq upcall_frame_if, %eax, $EFLAGS_IF, "frame EFLAGS.IF (events were enabled) is"
    check_eq upcall_frame_sp, upcall_frame_va, upcall_esp_want, "the frame is not right below the interrupted ESP; it is at"
    check_eq iret_restores_mask, mask_after_iret, $0, "evtchn_upcall_mask after the iret is"
    check_eq upcall_preserves_result, upcall_result, version, "the interrupted hypercall's result is"
    bit_of SHINFO_evtchn_pending, port_a
    mov %eax, %edx
    bit_of SHINFO_evtchn_pending, port_c
    add %edx, %eax
    movzbl shinfo_page+VCPU_upcall_pending, %edx
    add %edx, %eax
    check_eq upcall_consumed, %eax, $0, "pending(A) + pending(C) + evtchn_upcall_pending after the handler:"

/* Step 10: a masked port: a send on B with A masked only sets A's pending
 * bit. EVTCHNOP_unmask(A) re-raises it; the next unmasked hypercall delivers
 * it. */
step10_masked_port:
    call reset_events
    mov port_a, %ecx
    lock bts %ecx, shinfo_page+SHINFO_evtchn_mask
    port_op EVTCHNOP_send, port_b
    check_eq send_to_masked, %eax, $0, "EVTCHNOP_send(B) with A masked returned"
    bit_of SHINFO_evtchn_pending, port_a
    check_eq masked_port_pending, %eax, $1, "pending bit of the masked port A is"
    sel_bit_of port_a
    movzbl shinfo_page+VCPU_upcall_pending, %edx
    add %edx, %eax
    check_eq masked_port_quiet, %eax, $0, "selector bit + evtchn_upcall_pending for a masked port:"
    port_op EVTCHNOP_unmask, port_a
    check_eq unmask, %eax, $0, "EVTCHNOP_unmask(A) returned"
    bit_of SHINFO_evtchn_mask, port_a
    check_eq unmask_clears_mask, %eax, $0, "mask bit of A after unmask is"
    sel_bit_of port_a
    movzbl shinfo_page+VCPU_upcall_pending, %edx
    add %edx, %eax
    check_eq unmask_reraises, %eax, $2, "selector bit + evtchn_upcall_pending after unmask:"
    check_eq unmask_no_upcall_while_masked, upcall_count, $0, "upcalls while the vCPU is masked:"
    movb $0, shinfo_page+VCPU_upcall_mask
    mov $XENVER_version, %ebx
    xor %ecx, %ecx
    HYPERCALL __HYPERVISOR_xen_version
    movb $1, shinfo_page+VCPU_upcall_mask
    check_eq unmask_upcall, upcall_count, $1, "upcalls after unmasking the vCPU:"
    seen_of port_a
    check_eq unmask_upcall_port, %eax, $1, "the handler's scan found A (times):"

/* Step 11: bind_vcpu moves an interdomain port to a vCPU; an IPI port cannot
 * move (-EINVAL) and a vCPU we do not have is -ENOENT. */
step11_bind_vcpu:
    mov port_a, %eax
    xor %edx, %edx
    call evtchn_bind_vcpu
    check_eq bind_vcpu, %eax, $0, "EVTCHNOP_bind_vcpu(A, 0) returned"
    mov port_c, %eax
    xor %edx, %edx
    call evtchn_bind_vcpu
    check_eq bind_vcpu_ipi, %eax, $-EINVAL, "EVTCHNOP_bind_vcpu(IPI port, 0) returned"
    mov port_a, %eax
    mov $1, %edx
    call evtchn_bind_vcpu
    check_eq bind_vcpu_no_vcpu, %eax, $-ENOENT, "EVTCHNOP_bind_vcpu(A, vCPU 1 of a 1-vCPU domain) returned"

/* Step 12: a VIRQ port cannot be sent on. */
step12_send_virq:
    port_op EVTCHNOP_send, port_d
    check_eq send_virq, %eax, $-EINVAL, "EVTCHNOP_send(VIRQ port) returned"

/* Step 13: close B. A reverts to unbound (remote: our domain); B is closed
 * and a second close is -EINVAL. Then close A, C and D. */
step13_close:
    port_op EVTCHNOP_close, port_b
    check_eq close_interdomain, %eax, $0, "EVTCHNOP_close(B) returned"
    check_status status_closed, port_b, EVTCHNSTAT_closed
    check_status close_reverts_peer, port_a, EVTCHNSTAT_unbound
    movzwl es_buf+ES_u_dom, %eax
    check_eq close_reverts_peer_dom, %eax, my_domid, "A's remote domain after closing B is"
    port_op EVTCHNOP_close, port_b
    check_eq close_twice, %eax, $-EINVAL, "a second EVTCHNOP_close(B) returned"
    port_op EVTCHNOP_close, port_a
    check_eq close_unbound, %eax, $0, "EVTCHNOP_close(A) returned"
    port_op EVTCHNOP_close, port_c
    check_eq close_ipi, %eax, $0, "EVTCHNOP_close(C) returned"
    port_op EVTCHNOP_close, port_d
    check_eq close_virq, %eax, $0, "EVTCHNOP_close(D) returned"
    check_status status_closed_virq, port_d, EVTCHNSTAT_closed

/* Step 14: bad ports. Port 0 (reserved) and UNUSED_PORT (free) are valid
 * port numbers to Xen: status says "closed", unmask succeeds, send, close and
 * bind_vcpu refuse them (-EINVAL). NR_EVENT_CHANNELS is -EINVAL everywhere. */
step14_bad_ports:
    port_op EVTCHNOP_send, $0
    check_eq bad_send_port0, %eax, $-EINVAL, "EVTCHNOP_send(0) returned"
    port_op EVTCHNOP_send, $UNUSED_PORT
    check_eq bad_send_unused, %eax, $-EINVAL, "EVTCHNOP_send(unused port) returned"
    port_op EVTCHNOP_send, $NR_EVENT_CHANNELS
    check_eq bad_send_nr, %eax, $-EINVAL, "EVTCHNOP_send(NR_EVENT_CHANNELS) returned"
    port_op EVTCHNOP_close, $0
    check_eq bad_close_port0, %eax, $-EINVAL, "EVTCHNOP_close(0) returned"
    port_op EVTCHNOP_close, $UNUSED_PORT
    check_eq bad_close_unused, %eax, $-EINVAL, "EVTCHNOP_close(unused port) returned"
    port_op EVTCHNOP_close, $NR_EVENT_CHANNELS
    check_eq bad_close_nr, %eax, $-EINVAL, "EVTCHNOP_close(NR_EVENT_CHANNELS) returned"
    port_op EVTCHNOP_unmask, $0
    check_eq bad_unmask_port0, %eax, $0, "EVTCHNOP_unmask(0) returned"
    port_op EVTCHNOP_unmask, $UNUSED_PORT
    check_eq bad_unmask_unused, %eax, $0, "EVTCHNOP_unmask(unused port) returned"
    port_op EVTCHNOP_unmask, $NR_EVENT_CHANNELS
    check_eq bad_unmask_nr, %eax, $-EINVAL, "EVTCHNOP_unmask(NR_EVENT_CHANNELS) returned"
    check_status bad_status_port0, $0, EVTCHNSTAT_closed
    check_status bad_status_unused, $UNUSED_PORT, EVTCHNSTAT_closed
    mov $NR_EVENT_CHANNELS, %eax
    call evtchn_status_of
    check_eq bad_status_nr, %eax, $-EINVAL, "EVTCHNOP_status(NR_EVENT_CHANNELS) returned"
    xor %eax, %eax
    xor %edx, %edx
    call evtchn_bind_vcpu
    check_eq bad_bind_vcpu_port0, %eax, $-EINVAL, "EVTCHNOP_bind_vcpu(0, 0) returned"
    mov $UNUSED_PORT, %eax
    xor %edx, %edx
    call evtchn_bind_vcpu
    check_eq bad_bind_vcpu_unused, %eax, $-EINVAL, "EVTCHNOP_bind_vcpu(unused port, 0) returned"
    mov $NR_EVENT_CHANNELS, %eax
    xor %edx, %edx
    call evtchn_bind_vcpu
    check_eq bad_bind_vcpu_nr, %eax, $-EINVAL, "EVTCHNOP_bind_vcpu(NR_EVENT_CHANNELS, 0) returned"

/* Step 15: physical IRQs are for privileged domains: bind_pirq is -EPERM. */
step15_bind_pirq:
    movl $BAD_PIRQ, pirq_arg
    movl $0, pirq_arg+4
    movl $0, pirq_arg+8
    mov $EVTCHNOP_bind_pirq, %ebx
    mov $pirq_arg, %ecx
    HYPERCALL __HYPERVISOR_event_channel_op
    check_eq bind_pirq, %eax, $-EPERM, "EVTCHNOP_bind_pirq(1) returned"

/* Step 16: EVTCHNOP_init_control (the FIFO ABI) fails, which is what makes a
 * guest stay with the 2-level ABI. Any error will do. This is xendbg's Xen,
 * which offers only the 2-level ABI (issue 4): a real Xen built with FIFO
 * support would accept this control block (one of our own frames, offset 0,
 * vCPU 0), which is why a valid one is passed. */
step16_fifo:
    mov $fifo_page, %eax
    sub $VIRT_BASE, %eax
    shr $PAGE_SHIFT, %eax               /* its pfn; for a PV guest a gfn is an mfn */
    mov SI_mfn_list(%ebp), %ecx
    mov (%ecx,%eax,4), %eax
    mov %eax, fifo_arg                  /* control_gfn (u64): a page of ours */
    movl $0, fifo_arg+4
    movl $0, fifo_arg+8                 /* offset */
    movl $0, fifo_arg+12                /* vcpu */
    mov $EVTCHNOP_init_control, %ebx
    mov $fifo_arg, %ecx
    HYPERCALL __HYPERVISOR_event_channel_op
    mov %eax, fifo_rc
    test %eax, %eax
    check_cond s, fifo_refused, fifo_rc, "EVTCHNOP_init_control did not fail, it returned"

/* Step 17: the compat form (hypercall 16) takes {u32 cmd; union}: the same
 * status of the console port. */
step17_compat:
    movl $EVTCHNOP_status, compat_arg
    movw $DOMID_SELF, compat_arg+4+ES_dom
    mov console_port, %eax
    mov %eax, compat_arg+4+ES_port
    movl $-1, compat_arg+4+ES_status
    mov $compat_arg, %ebx
    HYPERCALL __HYPERVISOR_event_channel_op_compat
    check_eq compat_status, %eax, $0, "event_channel_op_compat(status) returned"
    check_eq compat_status_kind, compat_arg+4+ES_status, $EVTCHNSTAT_interdomain, "its status of the console port is"
    jmp finish

    NO_SHARED_INFO
    .size main, . - main

/* ---- routines ----------------------------------------------------------------- */

/* evtchn_port_op(EAX = cmd): event_channel_op(cmd, &port_arg). Returns EAX;
 * preserves every other register. */
    .type evtchn_port_op, @function
evtchn_port_op:
    push %ebx
    push %ecx
    mov %eax, %ebx
    mov $port_arg, %ecx
    HYPERCALL __HYPERVISOR_event_channel_op
    pop %ecx
    pop %ebx
    ret
    .size evtchn_port_op, . - evtchn_port_op

/* evtchn_bind_vcpu(EAX = port, EDX = vcpu): EVTCHNOP_bind_vcpu. Returns EAX. */
    .type evtchn_bind_vcpu, @function
evtchn_bind_vcpu:
    mov %eax, port_arg
    mov %edx, port_arg+4
    mov $EVTCHNOP_bind_vcpu, %eax
    jmp evtchn_port_op
    .size evtchn_bind_vcpu, . - evtchn_bind_vcpu

/* evtchn_status_of(EAX = port): EVTCHNOP_status on {DOMID_SELF, port} into
 * es_buf (its OUT fields poisoned first). Returns EAX. */
    .type evtchn_status_of, @function
evtchn_status_of:
    push %ebx
    push %ecx
    movl $DOMID_SELF, es_buf+ES_dom
    mov %eax, es_buf+ES_port
    movl $0xeeeeeeee, es_buf+ES_status
    movl $0xeeeeeeee, es_buf+ES_vcpu
    movl $-1, es_buf+ES_u_dom
    movl $-1, es_buf+ES_u_port
    mov $EVTCHNOP_status, %ebx
    mov $es_buf, %ecx
    HYPERCALL __HYPERVISOR_event_channel_op
    pop %ecx
    pop %ebx
    ret
    .size evtchn_status_of, . - evtchn_status_of

/* status_check(EAX = port, EDX = want_status): EAX = 0 if EVTCHNOP_status
 * returned 0 with that status and vCPU 0, else 1; keeps what it saw. */
    .type status_check, @function
status_check:
    mov %eax, st_port
    mov %edx, st_want
    call evtchn_status_of
    mov %eax, st_rc
    test %eax, %eax
    jnz 1f
    mov es_buf+ES_status, %eax
    cmp st_want, %eax
    jne 1f
    cmpl $0, es_buf+ES_vcpu
    jne 1f
    xor %eax, %eax
    ret
1:  mov $1, %eax
    ret
    .size status_check, . - status_check

/* status_explain: the rest of a failed check_status line. */
    .type status_explain, @function
status_explain:
    print_lit "of port "
    mov st_port, %eax
    call print_value
    print_lit " returned "
    mov st_rc, %eax
    call print_value
    cmpl $0, st_rc
    jne 1f
    print_lit " with status "
    mov es_buf+ES_status, %eax
    call print_value
    print_lit " vcpu "
    mov es_buf+ES_vcpu, %eax
    call print_value
1:  print_lit ", want 0 with status "
    mov st_want, %eax
    call print_value
    print_lit " vcpu 0\n"
    ret
    .size status_explain, . - status_explain

/* reset_events: clears the pending and mask bits of ports 0-31 (all of ours),
 * the selector, evtchn_upcall_pending and the handler's counters. The vCPU
 * stays masked. */
    .type reset_events, @function
reset_events:
    push %ecx
    push %edi
    xor %eax, %eax
    xchg %eax, shinfo_page+SHINFO_evtchn_pending
    xor %eax, %eax
    xchg %eax, shinfo_page+SHINFO_evtchn_mask
    xor %eax, %eax
    xchg %eax, shinfo_page+VCPU_pending_sel
    movb $0, shinfo_page+VCPU_upcall_pending
    movl $0, upcall_count
    mov $seen, %edi
    mov $SEEN_PORTS, %ecx
    xor %eax, %eax
    rep stosb
    pop %edi
    pop %ecx
    ret
    .size reset_events, . - reset_events

/*
 * evtchn_upcall: the event callback. Xen enters it in ring 1 with events
 * masked and this frame at ESP: EIP, CS (saved mask in bits 16-23), EFLAGS.
 * It keeps a copy of the frame, then does the 2-level scan: clear
 * evtchn_upcall_pending, take (xchg) evtchn_pending_sel, and for each selected
 * word every pending & ~masked bit, cleared with lock btr and counted in
 * seen[]. It returns through the iret stub ("push %eax; mov $23,%eax;
 * int $0x82"): Xen pops EAX, EIP, CS, EFLAGS and restores the mask from
 * EFLAGS.IF. Every register of the interrupted code is preserved.
 */
    .balign 16
    .type evtchn_upcall, @function
evtchn_upcall:
    pusha                               /* the frame is now at 32(%esp) */
#define UPCALL_SAVED 32
    incl upcall_count
    lea UPCALL_SAVED(%esp), %eax
    mov %eax, upcall_frame_va
    .irp i, 0, 1, 2
    mov UPCALL_SAVED+\i*4(%esp), %eax
    mov %eax, upcall_frame+\i*4
    .endr
    movzbl shinfo_page+VCPU_upcall_mask, %eax
    mov %eax, upcall_mask_on_entry
    movb $0, shinfo_page+VCPU_upcall_pending
    xor %eax, %eax
    xchg %eax, shinfo_page+VCPU_pending_sel /* EAX = the words to look at */
upcall_next_word:
    test %eax, %eax
    jz upcall_scanned
    bsf %eax, %ecx                      /* ECX = word */
    btr %ecx, %eax
    mov shinfo_page+SHINFO_evtchn_pending(,%ecx,4), %edx
    mov shinfo_page+SHINFO_evtchn_mask(,%ecx,4), %edi
    not %edi
    and %edi, %edx                      /* EDX = pending and not masked */
upcall_next_bit:
    test %edx, %edx
    jz upcall_next_word
    bsf %edx, %ebx                      /* EBX = bit */
    btr %ebx, %edx
    lock btr %ebx, shinfo_page+SHINFO_evtchn_pending(,%ecx,4)
    mov %ecx, %esi
    shl $EVTCHN_WORD_SHIFT, %esi
    add %ebx, %esi                      /* ESI = port */
    cmp $SEEN_PORTS, %esi
    jae 1f
    incb seen(%esi)
    jmp upcall_next_bit
1:  incl seen_other
    jmp upcall_next_bit
upcall_scanned:
    cmpl $UPCALL_STORM, upcall_count
    jb 1f
    /* Too many upcalls: return with IF clear, which leaves events masked. */
    andl $~EFLAGS_IF, UPCALL_SAVED+BF_eflags(%esp)
1:  popa
upcall_iret:
    jmp hypercall_page + __HYPERVISOR_iret * 32
    .size evtchn_upcall, . - evtchn_upcall

/* evtchn_failsafe: Xen enters it when it cannot return to the guest with the
 * segments the guest had. This guest never changes its segments. */
    LAB_FAILSAFE_DEFINE

/* ---- data --------------------------------------------------------------------- */
    .data
    .balign 4
start_info_va:          .long 0
shinfo_rc:              .long -1
my_domid:               .long 0         /* learnt from alloc_unbound's status */
console_port:           .long 0
port_a:                 .long 0         /* alloc_unbound */
port_b:                 .long 0         /* bind_interdomain to A */
port_c:                 .long 0         /* bind_ipi */
port_d:                 .long 0         /* bind_virq(VIRQ_DEBUG) */
version:                .long 0
upcall_result:          .long 0
mask_after_iret:        .long 0
upcall_count:           .long 0
upcall_mask_on_entry:   .long 0
upcall_esp_want:        .long 0         /* where the frame must be: below the interrupted ESP */
upcall_frame_va:        .long 0         /* where it was */
seen_other:             .long 0         /* deliveries of ports >= SEEN_PORTS */
upcall_frame:           .fill 3, 4, 0   /* copy of the last upcall's bounce frame */
fifo_rc:                .long 0
st_port:                .long 0         /* what the last status_check saw */
st_want:                .long 0
st_rc:                  .long 0
/* hypercall argument structures (event_channel.h) */
port_arg:               .long 0, 0      /* {port} / bind_vcpu {port, vcpu} */
au_arg:                 .long 0, 0      /* alloc_unbound {u16 dom, u16 remote_dom; OUT port} */
bi_arg:                 .long 0, 0, 0   /* bind_interdomain {u16 remote_dom; remote_port; OUT local_port} */
ipi_arg:                .long 0, 0      /* bind_ipi {vcpu; OUT port} */
virq_arg:               .long 0, 0, 0   /* bind_virq {virq, vcpu; OUT port} */
pirq_arg:               .long 0, 0, 0   /* bind_pirq {pirq, flags; OUT port} */
es_buf:                 .fill EVTCHN_STATUS_SIZE, 1, 0
    .balign 8
fifo_arg:               .fill 24, 1, 0  /* init_control {u64 control_gfn; u32 offset, vcpu; OUT ...} */
compat_arg:             .fill 32, 1, 0  /* evtchn_op {u32 cmd; union (28 bytes)} */

/* ---- bss ---------------------------------------------------------------------- */
    .bss
    .balign PAGE_SIZE
shinfo_page:            .skip PAGE_SIZE /* shared_info is mapped here (step 1) */
fifo_page:              .skip PAGE_SIZE /* offered to init_control, never used */
seen:                   .skip SEEN_PORTS /* seen[port]: deliveries found by the handler */
    .balign 16
stack:                  .skip 16384
stack_top:
