/*
 * mmu-pv64.S - lab guest: page tables, pinning, mmu_update and
 * update_va_mapping, x86_64 PV.
 *
 * The guest side of Xen's PV MMU (arch/x86/mm.c): direct paging, where the
 * guest's page tables hold machine frame numbers and every change goes
 * through Xen, which keeps a type and a type count for each frame and refuses
 * anything that would let the guest write a page table behind its back.
 *
 * The guest takes seven frames of its own above the start-of-day region (the
 * last pfns of the domain; pfn -> mfn through the p2m, start_info.mfn_list)
 * and reaches them through "windows", pages of its .bss that it re-points
 * with update_va_mapping. In them it builds a new 4-level table: an L4 that
 * copies the kernel's mappings from the boot L4 (Xen fills its own slots
 * 256-271 when it validates the L4) plus a test slot -> L3 -> L2 -> L1 -> a
 * data page at TEST_VA. Then it makes the table frames read-only, pins the
 * L4 (MMUEXT_PIN_L4_TABLE: Xen validates the whole tree), switches to it
 * (MMUEXT_NEW_BASEPTR), maps and unmaps pages through each interface
 * (mmu_update on a PTE's machine address, update_va_mapping with UVMF_INVLPG,
 * mmuext INVLPG_LOCAL), takes page faults on purpose, and checks that Xen
 * refuses, with real Xen's error codes:
 *
 *   pinning a table that is mapped writable            -EINVAL (bad type)
 *   pinning an L1 that maps itself writable            -EBUSY  (get_page_from_l1e)
 *   pinning twice / unpinning what is not pinned        -EINVAL
 *   a writable mapping of a pinned table frame          -EBUSY  (get_page_from_l1e)
 *   mapping a frame the domain does not own             -EBUSY  (get_page_from_l1e)
 *   writing Xen's L4 slots (256..271)                   -EINVAL (mod_l4_entry)
 *   MMU_MACHPHYS_UPDATE of a frame it does not own      -EINVAL
 *
 * Page faults: the #PF handler in the trap table reads CR2 from
 * vcpu_info.arch.cr2 in shared_info and the error code from the bounce frame
 * (RCX, R11, error code, RIP, CS, RFLAGS, RSP, SS). Xen gives a guest
 * kernel's fault the error code without the user bit: not-present read = 0,
 * write to a read-only page = 3 (P|W). The handler either skips the faulting
 * instruction or maps the page and retries it, and returns with the iret
 * hypercall. At the end the guest switches back to the boot table, unpins
 * its own (Xen drops the types of the whole tree) and restores its windows.
 *
 * Each step prints "CHECK <name>: ok" or "CHECK <name>: FAIL <what> <got>,
 * want <want>"; then "RESULT: PASS" or "RESULT: FAIL", and the guest powers
 * itself off. Entry state (Xen): ring 3 in guest kernel mode, RSI =
 * start_info. Registers in main: R15 = start_info, R14 = the p2m
 * (mfn_list), R13 = the M2P; routines preserve everything but RAX (and RDX
 * where they say so).
 */
#include "xen-pv64.inc"

/* The frames this guest takes, indexes into frame_pfn / frame_mfn / windows. */
#define F_L4            0       /* the new top-level table */
#define F_L3            1
#define F_L2            2
#define F_L1            3
#define F_DATA          4       /* mapped at TEST_VA by the new table */
#define F_DATA2         5       /* mapped and unmapped through each hypercall */
#define F_SELF          6       /* an L1 whose entry 0 maps itself writable */
#define NFRAMES         7
#define W_SPARE         NFRAMES /* one more window, for mappings that should fail */
#define NWINDOWS        (NFRAMES + 1)

#define TEST_SLOT       1                   /* L4 slot of the test region */
#define TEST_VA         0x0000008000000000  /* TEST_SLOT << 39: L3, L2, L1 index 0 */
#define DATA_MAGIC      0xda7a000011112222
#define DATA2_MAGIC     0xda7a000033334444
#define WRITTEN_MAGIC   0x5eed000055556666
#define M2P_TEST_PFN    0x5a5a              /* a pfn written with MMU_MACHPHYS_UPDATE */
#define FOREIGN_SCAN    0x100000            /* mfns scanned for one the M2P does not know */
#define PF_STORM        8                   /* more faults than this: give up */

#define PTE_RW          (_PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY)
#define PTE_RO          (_PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED)
#define PDE             (_PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED)

/* ---- Xen ELF notes ------------------------------------------------------------ */
    LAB_NOTES

    HYPERCALL_PAGE_DEFINE
    LAB_LIB_DEFINE

/* ---- helpers for this guest ------------------------------------------------- */

/* win_va REG, I: REG = the VA of window I. */
.macro win_va reg, i
    lea windows+(\i)*PAGE_SIZE(%rip), \reg
.endm

/* pte_of I, FLAGS: RSI = frame I's machine address | FLAGS. Clobbers RAX. */
.macro pte_of i, flags
    mov frame_mfn+(\i)*8(%rip), %rsi
    shl $PAGE_SHIFT, %rsi
    or $(\flags), %rsi
.endm

/* uvm_window I, FRAME, FLAGS: update_va_mapping(window I, FRAME | FLAGS,
 * UVMF_INVLPG). RAX = rc. */
.macro uvm_window i, frame, flags
    win_va %rdi, \i
    pte_of \frame, \flags
    mov $UVMF_INVLPG, %edx
    call uvm
.endm

/* entry_ma FRAME, SLOT: RDI = machine address of entry SLOT of table FRAME. */
.macro entry_ma frame, slot
    mov frame_mfn+(\frame)*8(%rip), %rdi
    shl $PAGE_SHIFT, %rdi
    add $(\slot)*8, %rdi
.endm

/* mmuext CMD, ARG1: one mmuext_op; ARG1 any operand (frame mfn, VA). RAX = rc. */
.macro mmuext cmd, arg1
    mov \arg1, %rsi
    mov $\cmd, %edi
    call mmuext1
.endm

/* ---- entry ------------------------------------------------------------------- */
    LAB_START

    .text
    .type main, @function
main:
    mov start_info_va(%rip), %r15
    mov SI_mfn_list(%r15), %r14
    movabs $M2P_VIRT_START, %r13
    print_lit "mmu-pv64: page tables, pinning, mmu_update, update_va_mapping\n"

/* Step 1: map shared_info over a .bss page (the #PF handler reads CR2 from
 * vcpu_info.arch.cr2 there), and register the #PF handler. */
step1_setup:
    lea shinfo_page(%rip), %rdi
    mov SI_shared_info(%r15), %rsi
    or $PTE_RW, %rsi
    mov $UVMF_INVLPG, %edx
    call uvm
    mov %rax, shinfo_rc(%rip)
    check_eq map_shared_info, %rax, $0, "update_va_mapping(shared_info) returned"
    lea trap_table(%rip), %rdi
    HYPERCALL __HYPERVISOR_set_trap_table
    check_eq trap_table, %rax, $0, "set_trap_table(#PF) returned"

/* Step 2: choose the frames: the last NFRAMES pfns of the domain, far above
 * the start-of-day region. Their mfns come from the p2m. Remember which pfn
 * backs each window page, to put it back at the end, and the boot L4. */
step2_frames:
    mov SI_nr_pages(%r15), %rax
    sub $NFRAMES, %rax
    xor %ecx, %ecx
1:  mov (%r14,%rax,8), %rdx
    lea frame_mfn(%rip), %rdi
    mov %rdx, (%rdi,%rcx,8)
    lea frame_pfn(%rip), %rdi
    mov %rax, (%rdi,%rcx,8)
    inc %rax
    inc %ecx
    cmp $NFRAMES, %ecx
    jb 1b
    xor %ecx, %ecx
    win_va %rdi, 0
2:  mov %rdi, %rax
    call va_to_pfn
    lea win_pfn(%rip), %rdx
    mov %rax, (%rdx,%rcx,8)
    add $PAGE_SIZE, %rdi
    inc %ecx
    cmp $NWINDOWS, %ecx
    jb 2b
    mov SI_pt_base(%r15), %rax
    call va_to_pfn
    mov (%r14,%rax,8), %rax
    mov %rax, boot_l4_mfn(%rip)
    print_field "mmu-pv64: frames from pfn ", frame_pfn(%rip)
    print_field " (L4 mfn ", frame_mfn+F_L4*8(%rip)
    print_field "), boot L4 mfn ", boot_l4_mfn(%rip)
    call print_nl

/* Step 3: point each window at its frame, read-write (a frame with no other
 * use may be mapped writable), and clear the frames. */
step3_windows:
    xor %ebx, %ebx                      /* RBX = number of failed updates */
    .irp i, 0, 1, 2, 3, 4, 5, 6
    uvm_window \i, \i, PTE_RW
    test %rax, %rax
    jz 1f
    inc %rbx
    mov %rax, windows_rc(%rip)
1:
    .endr
    check_eq map_windows, windows_rc(%rip), $0, "update_va_mapping(window, new frame RW) returned"
    test %rbx, %rbx
    jnz no_windows
    win_va %rdi, 0
    mov $NFRAMES*PAGE_SIZE/8, %ecx
    xor %eax, %eax
    rep stosq

/* Step 4: build the new table in the windows. L4: the boot L4's guest slots
 * (the kernel's mappings; slots 256-271 are Xen's and left empty, Xen fills
 * them), plus TEST_SLOT -> L3 -> L2 -> L1, whose entry 0 maps DATA. DATA and
 * DATA2 get magic words. SELF's entry 0 maps SELF itself, writable. */
step4_build:
    mov SI_pt_base(%r15), %rsi          /* the boot L4, mapped read-only */
    win_va %rdi, F_L4
    xor %ecx, %ecx
1:  cmp $FIRST_XEN_L4_SLOT, %ecx
    jb 2f
    cmp $LAST_XEN_L4_SLOT, %ecx
    jbe 3f
2:  mov (%rsi,%rcx,8), %rax
    mov %rax, (%rdi,%rcx,8)
3:  inc %ecx
    cmp $512, %ecx
    jb 1b
    pte_of F_L3, PDE
    mov %rsi, windows+F_L4*PAGE_SIZE+TEST_SLOT*8(%rip)
    pte_of F_L2, PDE
    mov %rsi, windows+F_L3*PAGE_SIZE(%rip)
    pte_of F_L1, PDE
    mov %rsi, windows+F_L2*PAGE_SIZE(%rip)
    pte_of F_DATA, PTE_RW
    mov %rsi, windows+F_L1*PAGE_SIZE(%rip)
    pte_of F_SELF, PTE_RW
    mov %rsi, windows+F_SELF*PAGE_SIZE(%rip)
    movabs $DATA_MAGIC, %rax
    mov %rax, windows+F_DATA*PAGE_SIZE(%rip)
    movabs $DATA2_MAGIC, %rax
    mov %rax, windows+F_DATA2*PAGE_SIZE(%rip)

/* Step 5: Xen refuses to pin a table frame that is mapped writable: the L4
 * frame has type "writable" (our window) and cannot become an L4: -EINVAL. */
step5_pin_writable:
    mmuext MMUEXT_PIN_L4_TABLE, frame_mfn+F_L4*8(%rip)
    check_eq pin_writable_refused, %rax, $-EINVAL, "PIN_L4_TABLE of a frame mapped writable returned"

/* Step 6: make the table frames (and SELF) read-only in the current tables:
 * remap their windows without _PAGE_RW. */
step6_read_only:
    movq $0, windows_rc(%rip)
    .irp i, F_L4, F_L3, F_L2, F_L1, F_SELF
    uvm_window \i, \i, PTE_RO
    test %rax, %rax
    jz 1f
    mov %rax, windows_rc(%rip)
1:
    .endr
    check_eq tables_read_only, windows_rc(%rip), $0, "update_va_mapping(window, table frame RO) returned"

/* Step 7: an L1 that maps itself writable cannot be pinned: validating entry
 * 0 needs a writable reference to a frame that is becoming an L1. Xen's
 * get_page_from_l1e fails with -EBUSY. */
step7_pin_self_mapping:
    mmuext MMUEXT_PIN_L1_TABLE, frame_mfn+F_SELF*8(%rip)
    check_eq pin_self_mapping_refused, %rax, $-EBUSY, "PIN_L1_TABLE of an L1 that maps itself RW returned"

/* Step 8: pin the new L4. Xen validates it and everything below it, and
 * installs its own L4 slots. Pinning it again is -EINVAL; so is unpinning
 * the L1, which is in use as an L1 but not pinned. */
step8_pin:
    mmuext MMUEXT_PIN_L4_TABLE, frame_mfn+F_L4*8(%rip)
    mov %rax, pin_rc(%rip)
    check_eq pin_l4, %rax, $0, "PIN_L4_TABLE of the new table returned"
    mmuext MMUEXT_PIN_L4_TABLE, frame_mfn+F_L4*8(%rip)
    check_eq pin_twice_refused, %rax, $-EINVAL, "a second PIN_L4_TABLE returned"
    mmuext MMUEXT_UNPIN_TABLE, frame_mfn+F_L1*8(%rip)
    check_eq unpin_unpinned_refused, %rax, $-EINVAL, "UNPIN_TABLE of an L1 that is not pinned returned"
    cmpq $0, pin_rc(%rip)
    jne no_pin

/* Step 9: a read-only mapping of a pinned table is fine (guests read their
 * tables all the time); a writable one is refused with -EBUSY, through
 * mmu_update (entry 3 of our L1) and through update_va_mapping (the spare
 * window) alike. */
step9_writable_pt:
    uvm_window W_SPARE, F_L2, PTE_RO
    check_eq ro_map_of_pinned_ok, %rax, $0, "update_va_mapping(pinned L2 frame, RO) returned"
    entry_ma F_L1, 3
    pte_of F_L2, PTE_RW
    call mmu_update1
    check_eq writable_pt_refused_mmu_update, %rax, $-EBUSY, "mmu_update(L1 entry = pinned L2 frame RW) returned"
    uvm_window W_SPARE, F_L2, PTE_RW
    check_eq writable_pt_refused_uvm, %rax, $-EBUSY, "update_va_mapping(pinned L2 frame, RW) returned"

/* Step 10: Xen's L4 slots 256..271 are not the guest's to write: -EINVAL. */
step10_xen_slots:
    entry_ma F_L4, FIRST_XEN_L4_SLOT
    pte_of F_L3, PDE
    call mmu_update1
    check_eq xen_l4_slot_refused, %rax, $-EINVAL, "mmu_update(L4 slot 256) returned"
    entry_ma F_L4, LAST_XEN_L4_SLOT
    pte_of F_L3, PDE
    call mmu_update1
    check_eq xen_l4_slot_last_refused, %rax, $-EINVAL, "mmu_update(L4 slot 271) returned"

/* Step 11: a frame the domain does not own: the first mfn whose M2P entry is
 * INVALID_M2P_ENTRY (one of Xen's). Mapping it is -EBUSY either way, and
 * MMU_MACHPHYS_UPDATE of it is -EINVAL. */
step11_foreign:
    mov $1, %eax
1:  cmpq $-1, (%r13,%rax,8)
    je 2f
    inc %rax
    cmp $FOREIGN_SCAN, %rax
    jb 1b
    check_fail foreign_frame, "no mfn with an invalid M2P entry below 0x100000"
    jmp step12_machphys
2:  mov %rax, foreign_mfn(%rip)
    print_field "mmu-pv64: a frame we do not own: mfn ", foreign_mfn(%rip)
    call print_nl
    entry_ma F_L1, 4
    mov foreign_mfn(%rip), %rsi
    shl $PAGE_SHIFT, %rsi
    or $PTE_RW, %rsi
    call mmu_update1
    check_eq foreign_map_refused_mmu_update, %rax, $-EBUSY, "mmu_update(L1 entry = foreign frame) returned"
    win_va %rdi, W_SPARE
    mov foreign_mfn(%rip), %rsi
    shl $PAGE_SHIFT, %rsi
    or $PTE_RO, %rsi
    mov $UVMF_INVLPG, %edx
    call uvm
    check_eq foreign_map_refused_uvm, %rax, $-EBUSY, "update_va_mapping(foreign frame, RO) returned"
    mov foreign_mfn(%rip), %rdi
    shl $PAGE_SHIFT, %rdi
    or $MMU_MACHPHYS_UPDATE, %rdi
    xor %esi, %esi
    call mmu_update1
    check_eq machphys_foreign_refused, %rax, $-EINVAL, "MMU_MACHPHYS_UPDATE of a foreign frame returned"

/* Step 12: MMU_MACHPHYS_UPDATE of a frame we own sets its M2P entry (read it
 * back through the read-only M2P); then put the real pfn back. */
step12_machphys:
    mov frame_mfn+F_DATA*8(%rip), %rdi
    shl $PAGE_SHIFT, %rdi
    or $MMU_MACHPHYS_UPDATE, %rdi
    mov $M2P_TEST_PFN, %esi
    call mmu_update1
    check_eq machphys_update, %rax, $0, "MMU_MACHPHYS_UPDATE(DATA -> 0x5a5a) returned"
    mov frame_mfn+F_DATA*8(%rip), %rax
    mov (%r13,%rax,8), %rax
    check_eq machphys_readback, %rax, $M2P_TEST_PFN, "the M2P entry of DATA is"
    mov frame_mfn+F_DATA*8(%rip), %rdi
    shl $PAGE_SHIFT, %rdi
    or $MMU_MACHPHYS_UPDATE, %rdi
    mov frame_pfn+F_DATA*8(%rip), %rsi
    call mmu_update1
    mov frame_mfn+F_DATA*8(%rip), %rax
    mov (%r13,%rax,8), %rax
    check_eq machphys_restore, %rax, frame_pfn+F_DATA*8(%rip), "after restoring, the M2P entry of DATA is"

/* Step 13: switch to the new table. First make sure the updates refused above
 * left it as built (a hypervisor that let one through would leave a table the
 * guest cannot run on): slot 511 still holds the kernel's L3, TEST_SLOT ours.
 * Then TEST_VA, mapped only there, must read DATA's magic, and the M2P must
 * still be readable (Xen's slot 256 in our L4). */
step13_switch:
    movabs $PTE_ADDR_MASK, %rcx
    mov SI_pt_base(%r15), %rdx
    mov 511*8(%rdx), %rax
    xor windows+F_L4*PAGE_SIZE+511*8(%rip), %rax
    and %rcx, %rax                      /* 0 if slot 511 maps the same L3 */
    mov windows+F_L4*PAGE_SIZE+TEST_SLOT*8(%rip), %rdx
    and %rcx, %rdx
    shr $PAGE_SHIFT, %rdx
    xor frame_mfn+F_L3*8(%rip), %rdx
    or %rdx, %rax                       /* and TEST_SLOT our L3 */
    mov %rax, intact(%rip)
    check_eq new_table_intact, %rax, $0, "(boot L4[511] ^ new L4[511]) | (new L4[1] ^ our L3), frame bits:"
    cmpq $0, intact(%rip)
    jne step20_unpin
    mmuext MMUEXT_NEW_BASEPTR, frame_mfn+F_L4*8(%rip)
    mov %rax, switch_rc(%rip)
    check_eq new_baseptr, %rax, $0, "NEW_BASEPTR(new L4) returned"
    movabs $TEST_VA, %rdi
    call probe_read
    mov %rax, probe_value(%rip)
    check_eq new_table_active_fault, %rdx, $0, "page faults reading TEST_VA in the new table:"
    movabs $DATA_MAGIC, %rax
    check_eq new_table_active, probe_value(%rip), %rax, "TEST_VA reads"
    mov (%r14), %rdi                    /* m2p[mfn_list[0]] must be 0 */
    lea (%r13,%rdi,8), %rdi
    call probe_read
    mov %rax, probe_value(%rip)
    check_eq m2p_in_new_table_fault, %rdx, $0, "page faults reading the M2P in the new table:"
    check_eq m2p_in_new_table, probe_value(%rip), $0, "m2p[mfn_list[0]] reads"
    cmpq $0, switch_rc(%rip)
    jne step19_switch_back

/* Step 14: map DATA2 at TEST_VA + 1 page with mmu_update on the PTE's machine
 * address (entry 1 of our L1), read it, unmap it the same way, then flush
 * the stale TLB entry with MMUEXT_INVLPG_LOCAL. */
step14_mmu_update:
    entry_ma F_L1, 1
    pte_of F_DATA2, PTE_RW
    call mmu_update1
    check_eq mmu_update_map, %rax, $0, "mmu_update(L1[1] = DATA2) returned"
    movabs $TEST_VA + PAGE_SIZE, %rdi
    call probe_read
    mov %rax, probe_value(%rip)
    movabs $DATA2_MAGIC, %rax
    check_eq mmu_update_map_read, probe_value(%rip), %rax, "TEST_VA + 0x1000 reads"
    entry_ma F_L1, 1
    xor %esi, %esi
    call mmu_update1
    check_eq mmu_update_unmap, %rax, $0, "mmu_update(L1[1] = 0) returned"
    check_eq mmu_update_unmap_pte, windows+F_L1*PAGE_SIZE+8(%rip), $0, "L1[1] after the unmap is"
    movabs $TEST_VA + PAGE_SIZE, %rax
    mmuext MMUEXT_INVLPG_LOCAL, %rax
    check_eq invlpg_local, %rax, $0, "MMUEXT_INVLPG_LOCAL returned"

/* Step 15: touch the page just unmapped: #PF, not present, read. The error
 * code is 0 (Xen clears the user bit of a guest kernel's fault), CR2 is the
 * address, the frame's RIP the faulting instruction; the handler skips it. */
step15_pf_not_present:
    movq $0, pf_count(%rip)
    movabs $TEST_VA + PAGE_SIZE, %rdi
    call probe_read
    check_eq pf_not_present, %rdx, $1, "page faults reading an unmapped page:"
    check_eq pf_not_present_error, pf_err(%rip), $0, "the error code (not present, read, kernel) is"
    movabs $TEST_VA + PAGE_SIZE, %rax
    check_eq pf_not_present_cr2, pf_cr2(%rip), %rax, "vcpu_info.arch.cr2 is"
    lea probe_read_site(%rip), %rdx
    check_eq pf_not_present_rip, pf_rip(%rip), %rdx, "the frame's RIP (want the faulting instruction) is"
    movzwl pf_cs(%rip), %eax
    check_eq pf_frame_cs, %rax, $KERNEL_CS_RPL0, "the frame's CS selector is"

/* Step 16: map DATA2 at TEST_VA + 2 pages with update_va_mapping(UVMF_INVLPG),
 * read it, unmap it the same way; the next touch faults. */
step16_uvm:
    movabs $TEST_VA + 2*PAGE_SIZE, %rdi
    pte_of F_DATA2, PTE_RW
    mov $UVMF_INVLPG, %edx
    call uvm
    check_eq uvm_map, %rax, $0, "update_va_mapping(TEST_VA + 0x2000, DATA2) returned"
    movabs $TEST_VA + 2*PAGE_SIZE, %rdi
    call probe_read
    mov %rax, probe_value(%rip)
    movabs $DATA2_MAGIC, %rax
    check_eq uvm_map_read, probe_value(%rip), %rax, "TEST_VA + 0x2000 reads"
    mov windows+F_L1*PAGE_SIZE+16(%rip), %rax
    movabs $PTE_ADDR_MASK, %rdx
    and %rdx, %rax
    mov frame_mfn+F_DATA2*8(%rip), %rdx
    shl $PAGE_SHIFT, %rdx
    check_eq uvm_map_pte, %rax, %rdx, "the frame in L1[2] is"
    movabs $TEST_VA + 2*PAGE_SIZE, %rdi
    xor %esi, %esi
    mov $UVMF_INVLPG, %edx
    call uvm
    check_eq uvm_unmap, %rax, $0, "update_va_mapping(TEST_VA + 0x2000, 0) returned"
    check_eq uvm_unmap_pte, windows+F_L1*PAGE_SIZE+16(%rip), $0, "L1[2] after the unmap is"
    movq $0, pf_count(%rip)
    movabs $TEST_VA + 2*PAGE_SIZE, %rdi
    call probe_read
    check_eq uvm_unmap_fault, %rdx, $1, "page faults reading the unmapped page:"

/* Step 17: map DATA2 read-only at TEST_VA + 2 pages and write to it: #PF with
 * error code 3 (present, write). The handler maps the page writable with
 * update_va_mapping and returns to the faulting instruction, which then
 * completes: the value lands in DATA2. */
step17_pf_write:
    movabs $TEST_VA + 2*PAGE_SIZE, %rdi
    pte_of F_DATA2, PTE_RO
    mov $UVMF_INVLPG, %edx
    call uvm
    check_eq uvm_map_ro, %rax, $0, "update_va_mapping(TEST_VA + 0x2000, DATA2 RO) returned"
    movabs $TEST_VA + 2*PAGE_SIZE, %rax
    mov %rax, pf_fix_va(%rip)
    pte_of F_DATA2, PTE_RW
    mov %rsi, pf_fix_pte(%rip)
    movq $-1, pf_fix_rc(%rip)
    movq $0, pf_count(%rip)
    movabs $TEST_VA + 2*PAGE_SIZE + 8, %rdi
    movabs $WRITTEN_MAGIC, %rsi
    call probe_write
    movq $0, pf_fix_va(%rip)
    check_eq pf_write_ro, %rdx, $1, "page faults writing a read-only page:"
    check_eq pf_write_ro_error, pf_err(%rip), $3, "the error code (present, write, kernel) is"
    movabs $TEST_VA + 2*PAGE_SIZE + 8, %rax
    check_eq pf_write_ro_cr2, pf_cr2(%rip), %rax, "vcpu_info.arch.cr2 is"
    check_eq pf_write_ro_fixup, pf_fix_rc(%rip), $0, "update_va_mapping in the #PF handler returned"
    movabs $WRITTEN_MAGIC, %rax
    check_eq pf_write_ro_retried, windows+F_DATA2*PAGE_SIZE+8(%rip), %rax, "after the retried write DATA2[1] holds"

/* Step 18: mmu_update reports in *done how many requests it completed. A
 * batch of two whose second request is refused (Xen's L4 slot) applies the
 * first, returns the error, and sets done to 1. */
step18_done:
    entry_ma F_L1, 5
    mov %rdi, mmu_reqs+MMU_ptr(%rip)
    pte_of F_DATA, PTE_RO
    mov %rsi, mmu_reqs+MMU_val(%rip)
    entry_ma F_L4, FIRST_XEN_L4_SLOT
    mov %rdi, mmu_reqs+MMU_UPDATE_SIZE+MMU_ptr(%rip)
    pte_of F_L3, PDE
    mov %rsi, mmu_reqs+MMU_UPDATE_SIZE+MMU_val(%rip)
    movl $0xeeee, mmu_done(%rip)
    lea mmu_reqs(%rip), %rdi
    mov $2, %esi
    lea mmu_done(%rip), %rdx
    mov $DOMID_SELF, %r10d
    HYPERCALL __HYPERVISOR_mmu_update
    check_eq mmu_update_batch_error, %rax, $-EINVAL, "mmu_update([good, L4 slot 256]) returned"
    check_eq32 mmu_update_done, mmu_done(%rip), $1, "its done count is"
    mov windows+F_L1*PAGE_SIZE+40(%rip), %rax
    movabs $PTE_ADDR_MASK, %rdx
    and %rdx, %rax
    mov frame_mfn+F_DATA*8(%rip), %rdx
    shl $PAGE_SHIFT, %rdx
    check_eq mmu_update_batch_first_applied, %rax, %rdx, "the frame in L1[5] (the first request) is"
    entry_ma F_L1, 5
    xor %esi, %esi
    call mmu_update1

/* Step 19: back to the boot table; TEST_VA is gone with the new table. */
step19_switch_back:
    mmuext MMUEXT_NEW_BASEPTR, boot_l4_mfn(%rip)
    check_eq switch_back, %rax, $0, "NEW_BASEPTR(boot L4) returned"
    movq $0, pf_count(%rip)
    movabs $TEST_VA, %rdi
    call probe_read
    check_eq switch_back_test_va_gone, %rdx, $1, "page faults reading TEST_VA in the boot table:"

/* Step 20: unpin the new L4. Nothing references it any more, so Xen drops the
 * types of the whole tree: the frames may be mapped writable again. A second
 * unpin is -EINVAL. */
step20_unpin:
    mmuext MMUEXT_UNPIN_TABLE, frame_mfn+F_L4*8(%rip)
    check_eq unpin, %rax, $0, "UNPIN_TABLE(new L4) returned"
    mmuext MMUEXT_UNPIN_TABLE, frame_mfn+F_L4*8(%rip)
    check_eq unpin_twice_refused, %rax, $-EINVAL, "a second UNPIN_TABLE returned"
    movq $0, windows_rc(%rip)
    .irp i, F_L4, F_L3, F_L2, F_L1
    uvm_window \i, \i, PTE_RW
    test %rax, %rax
    jz 1f
    mov %rax, windows_rc(%rip)
1:
    .endr
    check_eq unpin_releases_tree, windows_rc(%rip), $0, "update_va_mapping(former table frame, RW) returned"
    jmp step21_restore

no_pin:
    check_fail remaining, "not run: the new table could not be pinned"
    jmp step21_restore
no_windows:
    check_fail remaining, "not run: the windows could not be mapped"

/* Step 21: give the window pages back their own frames. */
step21_restore:
    movq $0, windows_rc(%rip)
    xor %ebx, %ebx
1:  win_va %rdi, 0
    mov %rbx, %rax
    shl $PAGE_SHIFT, %rax
    add %rax, %rdi
    lea win_pfn(%rip), %rax
    mov (%rax,%rbx,8), %rax
    mov (%r14,%rax,8), %rsi
    shl $PAGE_SHIFT, %rsi
    or $PTE_RW, %rsi
    mov $UVMF_INVLPG, %edx
    call uvm
    test %rax, %rax
    jz 2f
    mov %rax, windows_rc(%rip)
2:  inc %ebx
    cmp $NWINDOWS, %ebx
    jb 1b
    check_eq restore_windows, windows_rc(%rip), $0, "update_va_mapping(window, its own frame) returned"
    jmp finish
    .size main, . - main

/* ---- routines ----------------------------------------------------------------- */

/* va_to_pfn(RAX = VA in the start-of-day region): RAX = its pfn. */
    .type va_to_pfn, @function
va_to_pfn:
    push %rdx
    movabs $VIRT_BASE, %rdx
    sub %rdx, %rax
    shr $PAGE_SHIFT, %rax
    pop %rdx
    ret
    .size va_to_pfn, . - va_to_pfn

/* uvm(RDI = va, RSI = pte, RDX = flags): update_va_mapping. Returns RAX. */
    .type uvm, @function
uvm:
    push %rdi
    push %rsi
    push %rdx
    HYPERCALL __HYPERVISOR_update_va_mapping
    pop %rdx
    pop %rsi
    pop %rdi
    ret
    .size uvm, . - uvm

/* mmu_update1(RDI = ptr, RSI = val): mmu_update of one request, DOMID_SELF.
 * Returns RAX. */
    .type mmu_update1, @function
mmu_update1:
    push %rdi
    push %rsi
    push %rdx
    push %r10
    mov %rdi, mmu_reqs+MMU_ptr(%rip)
    mov %rsi, mmu_reqs+MMU_val(%rip)
    lea mmu_reqs(%rip), %rdi
    mov $1, %esi
    lea mmu_done(%rip), %rdx
    mov $DOMID_SELF, %r10d
    HYPERCALL __HYPERVISOR_mmu_update
    pop %r10
    pop %rdx
    pop %rsi
    pop %rdi
    ret
    .size mmu_update1, . - mmu_update1

/* mmuext1(RDI = cmd, RSI = arg1): mmuext_op of one operation, DOMID_SELF.
 * Returns RAX. */
    .type mmuext1, @function
mmuext1:
    push %rdi
    push %rsi
    push %rdx
    push %r10
    movl %edi, mmuext_arg+MMUEXT_cmd(%rip)
    mov %rsi, mmuext_arg+MMUEXT_arg1(%rip)
    movq $0, mmuext_arg+MMUEXT_arg2(%rip)
    lea mmuext_arg(%rip), %rdi
    mov $1, %esi
    xor %edx, %edx
    mov $DOMID_SELF, %r10d
    HYPERCALL __HYPERVISOR_mmuext_op
    pop %r10
    pop %rdx
    pop %rsi
    pop %rdi
    ret
    .size mmuext1, . - mmuext1

/* probe_read(RDI = va): RAX = the word at va, RDX = page faults taken (the
 * #PF handler skips the read if it faults; RAX is then 0). */
    .type probe_read, @function
probe_read:
    mov pf_count(%rip), %rdx
    mov %rdx, probe_pf_before(%rip)
    lea probe_read_resume(%rip), %rax
    mov %rax, pf_resume(%rip)
    xor %eax, %eax
probe_read_site:
    mov (%rdi), %rax
probe_read_resume:
    movq $0, pf_resume(%rip)
    mov pf_count(%rip), %rdx
    sub probe_pf_before(%rip), %rdx
    ret
    .size probe_read, . - probe_read

/* probe_write(RDI = va, RSI = value): store; RDX = page faults taken. */
    .type probe_write, @function
probe_write:
    mov pf_count(%rip), %rdx
    mov %rdx, probe_pf_before(%rip)
    lea probe_write_resume(%rip), %rax
    mov %rax, pf_resume(%rip)
probe_write_site:
    mov %rsi, (%rdi)
probe_write_resume:
    movq $0, pf_resume(%rip)
    mov pf_count(%rip), %rdx
    sub probe_pf_before(%rip), %rdx
    ret
    .size probe_write, . - probe_write

/*
 * trap_pf: the #PF handler. Frame at RSP (from Xen): RCX, R11, error code,
 * RIP, CS, RFLAGS, RSP, SS. It records the error code, RIP, CS and CR2
 * (vcpu_info.arch.cr2: a PV guest cannot read %cr2), then either
 *   - pf_fix_va set: maps pf_fix_va to pf_fix_pte with update_va_mapping and
 *     returns to the faulting instruction (once: pf_fix_va is cleared), or
 *   - pf_resume set: returns to pf_resume, skipping the instruction, or
 *   - neither (or too many faults): reports an unexpected fault.
 * It returns with the iret hypercall after dropping the error code: the stub
 * pushes RCX, R11, RAX above our flags word.
 */
    .balign 16
    .type trap_pf, @function
trap_pf:
    push %rax
    push %rdi
    push %rsi
    push %rdx
#define PF_SAVED 32                     /* the frame is at PF_SAVED(%rsp) */
    incq pf_count(%rip)
    mov PF_SAVED+BFE_err(%rsp), %rax
    mov %rax, pf_err(%rip)
    mov PF_SAVED+BFE_rip(%rsp), %rax
    mov %rax, pf_rip(%rip)
    mov PF_SAVED+BFE_cs(%rsp), %rax
    mov %rax, pf_cs(%rip)
    cmpq $0, shinfo_rc(%rip)
    jne 1f                              /* shared_info is not mapped */
    mov shinfo_page+VCPU_cr2(%rip), %rax
    mov %rax, pf_cr2(%rip)
1:  cmpq $PF_STORM, pf_count(%rip)
    jae trap_pf_unexpected
    mov pf_fix_va(%rip), %rdi
    test %rdi, %rdi
    jz 2f
    mov pf_fix_pte(%rip), %rsi
    mov $UVMF_INVLPG, %edx
    HYPERCALL __HYPERVISOR_update_va_mapping
    mov %rax, pf_fix_rc(%rip)
    movq $0, pf_fix_va(%rip)
    jmp trap_pf_return
2:  mov pf_resume(%rip), %rax
    test %rax, %rax
    jz trap_pf_unexpected
    mov %rax, PF_SAVED+BFE_rip(%rsp)
    jmp trap_pf_return
trap_pf_unexpected:
    lea pf_unexpected(%rip), %rax
    mov %rax, PF_SAVED+BFE_rip(%rsp)
trap_pf_return:
    pop %rdx
    pop %rsi
    pop %rdi
    pop %rax
    pop %rcx                            /* the interrupted RCX and R11 */
    pop %r11
    add $8, %rsp                        /* the error code */
    pushq $0                            /* iret flags: not VGCF_in_syscall */
    jmp hypercall_page + __HYPERVISOR_iret * 32
    .size trap_pf, . - trap_pf

/* pf_unexpected: where trap_pf sends a fault nobody asked for. */
    .type pf_unexpected, @function
pf_unexpected:
    lea stack_top(%rip), %rsp
    check_fail_start page_fault, "unexpected #PF:"
    print_field "rip=", pf_rip(%rip)
    print_field " cr2=", pf_cr2(%rip)
    print_field " error=", pf_err(%rip)
    print_field " faults=", pf_count(%rip)
    call print_nl
    jmp finish
    .size pf_unexpected, . - pf_unexpected

/* ---- data --------------------------------------------------------------------- */
    .data
    .balign 16
/* set_trap_table argument: the #PF handler, then the all-zero terminator */
trap_table:
    .byte TRAP_page_fault               /* vector */
    .byte 0                             /* flags: DPL 0 */
    .word FLAT_KERNEL_CS
    .long 0
    .quad trap_pf
    .quad 0, 0

start_info_va:      .quad 0
shinfo_rc:          .quad -1
boot_l4_mfn:        .quad 0
frame_pfn:          .fill NFRAMES, 8, 0
frame_mfn:          .fill NFRAMES, 8, 0
win_pfn:            .fill NWINDOWS, 8, 0 /* the pfn each window page had at boot */
windows_rc:         .quad 0             /* last failed update of a window */
pin_rc:             .quad -1
switch_rc:          .quad -1
foreign_mfn:        .quad 0
intact:             .quad 0
probe_value:        .quad 0
probe_pf_before:    .quad 0
pf_count:           .quad 0             /* faults taken by trap_pf */
pf_err:             .quad -1            /* what the last fault's frame and vcpu_info said */
pf_rip:             .quad 0
pf_cs:              .quad 0
pf_cr2:             .quad 0
pf_resume:          .quad 0             /* where to resume after a fault (skip) */
pf_fix_va:          .quad 0             /* or: map this VA ... */
pf_fix_pte:         .quad 0             /* ... to this PTE and retry */
pf_fix_rc:          .quad 0
mmu_reqs:           .fill 2*MMU_UPDATE_SIZE, 1, 0 /* struct mmu_update[2] */
mmuext_arg:         .fill MMUEXT_OP_SIZE, 1, 0    /* struct mmuext_op */
mmu_done:           .long 0
    .long 0

/* ---- bss ---------------------------------------------------------------------- */
    .bss
    .balign PAGE_SIZE
windows:            .skip NWINDOWS*PAGE_SIZE /* re-pointed at our frames */
shinfo_page:        .skip PAGE_SIZE     /* shared_info is mapped here */
    .balign 16
stack:              .skip 16384
stack_top:
