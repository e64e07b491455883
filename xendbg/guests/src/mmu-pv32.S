/*
 * mmu-pv32.S - lab guest: page tables, pinning, mmu_update and
 * update_va_mapping, x86_32 PAE PV.
 *
 * The 32-bit twin of mmu-pv64.S, with PAE's 3-level tables (8-byte entries)
 * and Xen's rules for them (arch/x86/mm.c):
 *
 *   - an L3 entry holds only the present bit (and the frame);
 *   - L3 slot 3 (the top GiB, 0xC0000000-0xFFFFFFFF) must be present, and
 *     its L2 is special: Xen keeps its own mappings (the read-only M2P at
 *     0xF5800000, and the rest of its hole) in that L2's slots 428-511, so
 *     such an L2 may not be shared by two L3s. The guest therefore builds its
 *     own top L2, copying the kernel's entries 0-427 from the boot one;
 *   - the guest may not write Xen's slots of that L2 (-EPERM, mod_l2_entry)
 *     nor L3 slot 3 of a validated L3 (-EINVAL, mod_l3_entry).
 *
 * Seven frames of its own (the last pfns of the domain, pfn -> mfn through
 * the p2m), reached through .bss "windows" re-pointed with update_va_mapping:
 * a new L3 -> (slot 2) L2 -> L1 -> DATA at TEST_VA, (slot 3) the new top L2.
 * It makes the table frames read-only, pins the L3 (MMUEXT_PIN_L3_TABLE),
 * switches to it (MMUEXT_NEW_BASEPTR), maps and unmaps pages through
 * mmu_update, update_va_mapping(va, pte_lo, pte_hi, flags) and
 * MMUEXT_INVLPG_LOCAL, takes page faults on purpose (ring 1: not-present read
 * = error code 0, write to a read-only page = 3; CR2 from
 * vcpu_info.arch.cr2), and checks Xen's refusals:
 *
 *   pinning a table that is mapped writable            -EINVAL (bad type)
 *   pinning an L1 that maps itself writable            -EBUSY  (get_page_from_l1e)
 *   pinning twice / unpinning what is not pinned        -EINVAL
 *   a writable mapping of a pinned table frame          -EBUSY
 *   mapping a frame the domain does not own             -EBUSY
 *   writing Xen's L2 slots (428..511 of the top L2)     -EPERM
 *   writing L3 slot 3                                    -EINVAL
 *   MMU_MACHPHYS_UPDATE of a frame it does not own      -EINVAL
 *
 * Each step prints "CHECK <name>: ok" or "CHECK <name>: FAIL <what> <got>,
 * want <want>"; then "RESULT: PASS" or "RESULT: FAIL", and the guest powers
 * itself off. Entry state (Xen): ring 1, ESI = start_info. Registers in
 * main: EBP = start_info; routines preserve everything but EAX (and EDX
 * where they say so).
 */
#include "xen-pv32.inc"

/* The frames this guest takes, indexes into frame_pfn / frame_mfn / windows. */
#define F_L3            0       /* the new top-level table */
#define F_L2TOP         1       /* its slot 3: the kernel's top GiB + Xen's slots */
#define F_L2            2       /* its slot 2: the test region */
#define F_L1            3
#define F_DATA          4       /* mapped at TEST_VA by the new table */
#define F_DATA2         5       /* mapped and unmapped through each hypercall */
#define F_SELF          6       /* an L1 whose entry 0 maps itself writable */
#define NFRAMES         7
#define W_SPARE         NFRAMES /* one more window, for mappings that should fail */
#define NWINDOWS        (NFRAMES + 1)

#define TEST_L3_SLOT    2
#define TEST_VA         0x80000000          /* TEST_L3_SLOT << 30: L2, L1 index 0 */
#define DATA_MAGIC      0xda7a1111
#define DATA2_MAGIC     0xda7a3333
#define WRITTEN_MAGIC   0x5eed5555
#define M2P_TEST_PFN    0x5a5a              /* a pfn written with MMU_MACHPHYS_UPDATE */
#define FOREIGN_SCAN    0x100000            /* mfns scanned for one the M2P does not know */
#define PF_STORM        8                   /* more faults than this: give up */
#define LAST_L2_SLOT    511

#define PTE_RW          (_PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY)
#define PTE_RO          (_PAGE_PRESENT | _PAGE_ACCESSED)
#define PDE             (_PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED)
#define PDPTE           _PAGE_PRESENT       /* PAE L3 entries: no other flag allowed */

/* ---- Xen ELF notes ------------------------------------------------------------ */
    LAB_NOTES

    HYPERCALL_PAGE_DEFINE
    LAB_LIB_DEFINE

/* ---- helpers for this guest ------------------------------------------------- */
/* A PAE entry or machine address is 64 bits: (mfn << 12 | flags) is split as
 * lo = mfn << 12 | flags, hi = mfn >> 20. */

/* pte_of FRAME, FLAGS: ECX:EDX = lo:hi of frame FRAME's PTE with FLAGS. */
.macro pte_of frame, flags
    mov frame_mfn+(\frame)*4, %ecx
    mov %ecx, %edx
    shl $PAGE_SHIFT, %ecx
    shr $(32 - PAGE_SHIFT), %edx
    or $(\flags), %ecx
.endm

/* put_entry WINDOW, SLOT, FRAME, FLAGS: write entry SLOT of the table in
 * WINDOW (8 bytes) = FRAME | FLAGS. Clobbers EAX, ECX, EDX. */
.macro put_entry window, slot, frame, flags
    pte_of \frame, \flags
    mov %ecx, windows+(\window)*PAGE_SIZE+(\slot)*8
    mov %edx, windows+(\window)*PAGE_SIZE+(\slot)*8+4
.endm

/* uvm_window I, FRAME, FLAGS: update_va_mapping(window I, FRAME | FLAGS,
 * UVMF_INVLPG). EAX = rc. */
.macro uvm_window i, frame, flags
    mov $windows+(\i)*PAGE_SIZE, %eax
    pte_of \frame, \flags
    call uvm
.endm

/* req_ptr REQ, FRAME, SLOT: request REQ of mmu_reqs points at entry SLOT of
 * table FRAME (MMU_NORMAL_PT_UPDATE). Clobbers EAX, EDX. */
.macro req_ptr req, frame, slot
    mov frame_mfn+(\frame)*4, %eax
    mov %eax, %edx
    shl $PAGE_SHIFT, %eax
    shr $(32 - PAGE_SHIFT), %edx
    add $(\slot)*8, %eax
    mov %eax, mmu_reqs+(\req)*MMU_UPDATE_SIZE+MMU_ptr
    mov %edx, mmu_reqs+(\req)*MMU_UPDATE_SIZE+MMU_ptr+4
.endm

/* req_val REQ, FRAME, FLAGS: request REQ's new value = FRAME | FLAGS. */
.macro req_val req, frame, flags
    pte_of \frame, \flags
    mov %ecx, mmu_reqs+(\req)*MMU_UPDATE_SIZE+MMU_val
    mov %edx, mmu_reqs+(\req)*MMU_UPDATE_SIZE+MMU_val+4
.endm

/* req_zero REQ: request REQ's new value = 0 (not present). */
.macro req_zero req
    movl $0, mmu_reqs+(\req)*MMU_UPDATE_SIZE+MMU_val
    movl $0, mmu_reqs+(\req)*MMU_UPDATE_SIZE+MMU_val+4
.endm

/* mmuext CMD, ARG1: one mmuext_op; ARG1 any operand. EAX = rc. */
.macro mmuext cmd, arg1
    mov \arg1, %edx
    mov $\cmd, %eax
    call mmuext1
.endm

/* entry_mfn ADDR: EAX = the frame number in the PAE entry at ADDR. */
.macro entry_mfn addr
    push %edx
    mov \addr, %eax
    shr $PAGE_SHIFT, %eax
    mov \addr+4, %edx
    and $0xfffff, %edx
    shl $(32 - PAGE_SHIFT), %edx
    or %edx, %eax
    pop %edx
.endm

/* ---- entry ------------------------------------------------------------------- */
    LAB_START

    .text
    .type main, @function
main:
    mov start_info_va, %ebp
    mov SI_mfn_list(%ebp), %eax
    mov %eax, p2m
    print_lit "mmu-pv32: page tables, pinning, mmu_update, update_va_mapping\n"

/* Step 1: map shared_info over a .bss page (the #PF handler reads CR2 from
 * vcpu_info.arch.cr2 there), and register the #PF handler. */
step1_setup:
    mov $shinfo_page, %eax
    mov SI_shared_info(%ebp), %ecx
    or $PTE_RW, %ecx
    xor %edx, %edx
    call uvm
    mov %eax, shinfo_rc
    check_eq map_shared_info, %eax, $0, "update_va_mapping(shared_info) returned"
    mov $trap_table, %ebx
    HYPERCALL __HYPERVISOR_set_trap_table
    check_eq trap_table, %eax, $0, "set_trap_table(#PF) returned"

/* Step 2: choose the frames: the last NFRAMES pfns of the domain, far above
 * the start-of-day region; their mfns come from the p2m. Remember which pfn
 * backs each window page, the boot L3, and where its top L2 is. */
step2_frames:
    mov p2m, %esi
    mov SI_nr_pages(%ebp), %eax
    sub $NFRAMES, %eax
    xor %ecx, %ecx
1:  mov %eax, frame_pfn(,%ecx,4)
    mov (%esi,%eax,4), %edx
    mov %edx, frame_mfn(,%ecx,4)
    inc %eax
    inc %ecx
    cmp $NFRAMES, %ecx
    jb 1b
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $PAGE_SHIFT, %eax
    add $windows - VIRT_BASE, %eax
    shr $PAGE_SHIFT, %eax
    mov %eax, win_pfn(,%ecx,4)
    inc %ecx
    cmp $NWINDOWS, %ecx
    jb 2b
    mov SI_pt_base(%ebp), %ebx          /* the boot L3, mapped read-only */
    mov %ebx, %eax
    sub $VIRT_BASE, %eax
    shr $PAGE_SHIFT, %eax
    mov (%esi,%eax,4), %eax
    mov %eax, boot_l3_mfn
    mov 3*8(%ebx), %eax                 /* the boot top L2 (L3 slot 3) ... */
    shr $PAGE_SHIFT, %eax
    mov 3*8+4(%ebx), %edx
    and $0xfffff, %edx
    shl $(32 - PAGE_SHIFT), %edx
    or %edx, %eax
    mov M2P_VIRT_START(,%eax,4), %eax   /* ... its pfn, through the M2P ... */
    shl $PAGE_SHIFT, %eax
    add $VIRT_BASE, %eax                /* ... and VA (start-of-day: pfn n at VIRT_BASE + n pages) */
    mov %eax, boot_l2top_va
    print_field "mmu-pv32: frames from pfn ", frame_pfn
    print_field " (L3 mfn ", frame_mfn+F_L3*4
    print_field "), boot L3 mfn ", boot_l3_mfn
    call print_nl

/* Step 3: point each window at its frame, read-write, and clear the frames. */
step3_windows:
    xor %ebx, %ebx                      /* EBX = number of failed updates */
    .irp i, 0, 1, 2, 3, 4, 5, 6
    uvm_window \i, \i, PTE_RW
    test %eax, %eax
    jz 1f
    inc %ebx
    mov %eax, windows_rc
1:
    .endr
    check_eq map_windows, windows_rc, $0, "update_va_mapping(window, new frame RW) returned"
    test %ebx, %ebx
    jnz no_windows
    mov $windows, %edi
    mov $NFRAMES*PAGE_SIZE/4, %ecx
    xor %eax, %eax
    rep stosl

/* Step 4: build the new table in the windows. L3: slot 2 -> L2 -> L1, whose
 * entry 0 maps DATA; slot 3 -> the new top L2, a copy of the boot top L2's
 * guest entries 0-427 (the kernel); Xen fills 428-511 when it validates it.
 * SELF's entry 0 maps SELF itself, writable. */
step4_build:
    put_entry F_L3, TEST_L3_SLOT, F_L2, PDPTE
    put_entry F_L3, 3, F_L2TOP, PDPTE
    mov boot_l2top_va, %esi
    mov $windows+F_L2TOP*PAGE_SIZE, %edi
    mov $PAE_L2_FIRST_XEN_SLOT*2, %ecx  /* 428 entries of 8 bytes */
    rep movsl
    put_entry F_L2, 0, F_L1, PDE
    put_entry F_L1, 0, F_DATA, PTE_RW
    put_entry F_SELF, 0, F_SELF, PTE_RW
    movl $DATA_MAGIC, windows+F_DATA*PAGE_SIZE
    movl $DATA2_MAGIC, windows+F_DATA2*PAGE_SIZE

/* Step 5: Xen refuses to pin a table frame that is mapped writable: the L3
 * frame has type "writable" (our window): -EINVAL. */
step5_pin_writable:
    mmuext MMUEXT_PIN_L3_TABLE, frame_mfn+F_L3*4
    check_eq pin_writable_refused, %eax, $-EINVAL, "PIN_L3_TABLE of a frame mapped writable returned"

/* Step 6: make the table frames (and SELF) read-only in the current tables. */
step6_read_only:
    movl $0, windows_rc
    .irp i, F_L3, F_L2TOP, F_L2, F_L1, F_SELF
    uvm_window \i, \i, PTE_RO
    test %eax, %eax
    jz 1f
    mov %eax, windows_rc
1:
    .endr
    check_eq tables_read_only, windows_rc, $0, "update_va_mapping(window, table frame RO) returned"

/* Step 7: an L1 that maps itself writable cannot be pinned: -EBUSY. */
step7_pin_self_mapping:
    mmuext MMUEXT_PIN_L1_TABLE, frame_mfn+F_SELF*4
    check_eq pin_self_mapping_refused, %eax, $-EBUSY, "PIN_L1_TABLE of an L1 that maps itself RW returned"

/* Step 8: pin the new L3. Xen validates it and everything below it, and
 * installs its own slots in the top L2. Pinning it again is -EINVAL; so is
 * unpinning the L1, which is in use but not pinned. */
step8_pin:
    mmuext MMUEXT_PIN_L3_TABLE, frame_mfn+F_L3*4
    mov %eax, pin_rc
    check_eq pin_l3, %eax, $0, "PIN_L3_TABLE of the new table returned"
    mmuext MMUEXT_PIN_L3_TABLE, frame_mfn+F_L3*4
    check_eq pin_twice_refused, %eax, $-EINVAL, "a second PIN_L3_TABLE returned"
    mmuext MMUEXT_UNPIN_TABLE, frame_mfn+F_L1*4
    check_eq unpin_unpinned_refused, %eax, $-EINVAL, "UNPIN_TABLE of an L1 that is not pinned returned"
    cmpl $0, pin_rc
    jne no_pin

/* Step 9: a read-only mapping of a pinned table is fine; a writable one is
 * refused with -EBUSY, through mmu_update and update_va_mapping alike. */
step9_writable_pt:
    uvm_window W_SPARE, F_L2, PTE_RO
    check_eq ro_map_of_pinned_ok, %eax, $0, "update_va_mapping(pinned L2 frame, RO) returned"
    req_ptr 0, F_L1, 3
    req_val 0, F_L2, PTE_RW
    call mmu_update1
    check_eq writable_pt_refused_mmu_update, %eax, $-EBUSY, "mmu_update(L1 entry = pinned L2 frame RW) returned"
    uvm_window W_SPARE, F_L2, PTE_RW
    check_eq writable_pt_refused_uvm, %eax, $-EBUSY, "update_va_mapping(pinned L2 frame, RW) returned"

/* Step 10: Xen's slots of the top L2 are not the guest's to write (-EPERM),
 * nor is L3 slot 3 once the L3 is validated (-EINVAL). */
step10_xen_slots:
    req_ptr 0, F_L2TOP, PAE_L2_FIRST_XEN_SLOT
    req_val 0, F_L1, PDE
    call mmu_update1
    check_eq xen_l2_slot_refused, %eax, $-EPERM, "mmu_update(top L2 slot 428) returned"
    req_ptr 0, F_L2TOP, LAST_L2_SLOT
    req_val 0, F_L1, PDE
    call mmu_update1
    check_eq xen_l2_slot_last_refused, %eax, $-EPERM, "mmu_update(top L2 slot 511) returned"
    req_ptr 0, F_L3, 3
    req_val 0, F_L2, PDPTE
    call mmu_update1
    check_eq xen_l3_slot_refused, %eax, $-EINVAL, "mmu_update(L3 slot 3) returned"

/* Step 11: a frame the domain does not own: the first mfn whose M2P entry is
 * INVALID_M2P_ENTRY (one of Xen's). Mapping it is -EBUSY either way, and
 * MMU_MACHPHYS_UPDATE of it is -EINVAL. */
step11_foreign:
    mov $1, %eax
1:  cmpl $INVALID_M2P_ENTRY, M2P_VIRT_START(,%eax,4)
    je 2f
    inc %eax
    cmp $FOREIGN_SCAN, %eax
    jb 1b
    check_fail foreign_frame, "no mfn with an invalid M2P entry below 0x100000"
    jmp step12_machphys
2:  mov %eax, foreign_mfn
    print_field "mmu-pv32: a frame we do not own: mfn ", foreign_mfn
    call print_nl
    req_ptr 0, F_L1, 4
    mov foreign_mfn, %ecx
    mov %ecx, %edx
    shl $PAGE_SHIFT, %ecx
    shr $(32 - PAGE_SHIFT), %edx
    or $PTE_RW, %ecx
    mov %ecx, mmu_reqs+MMU_val
    mov %edx, mmu_reqs+MMU_val+4
    call mmu_update1
    check_eq foreign_map_refused_mmu_update, %eax, $-EBUSY, "mmu_update(L1 entry = foreign frame) returned"
    mov foreign_mfn, %ecx
    mov %ecx, %edx
    shl $PAGE_SHIFT, %ecx
    shr $(32 - PAGE_SHIFT), %edx
    or $PTE_RO, %ecx
    mov $windows+W_SPARE*PAGE_SIZE, %eax
    call uvm
    check_eq foreign_map_refused_uvm, %eax, $-EBUSY, "update_va_mapping(foreign frame, RO) returned"
    mov foreign_mfn, %eax
    call machphys_req
    req_zero 0
    call mmu_update1
    check_eq machphys_foreign_refused, %eax, $-EINVAL, "MMU_MACHPHYS_UPDATE of a foreign frame returned"

/* Step 12: MMU_MACHPHYS_UPDATE of a frame we own sets its M2P entry (read it
 * back through the read-only M2P); then put the real pfn back. */
step12_machphys:
    mov frame_mfn+F_DATA*4, %eax
    call machphys_req
    movl $M2P_TEST_PFN, mmu_reqs+MMU_val
    movl $0, mmu_reqs+MMU_val+4
    call mmu_update1
    check_eq machphys_update, %eax, $0, "MMU_MACHPHYS_UPDATE(DATA -> 0x5a5a) returned"
    mov frame_mfn+F_DATA*4, %eax
    mov M2P_VIRT_START(,%eax,4), %eax
    check_eq machphys_readback, %eax, $M2P_TEST_PFN, "the M2P entry of DATA is"
    mov frame_mfn+F_DATA*4, %eax
    call machphys_req
    mov frame_pfn+F_DATA*4, %eax
    mov %eax, mmu_reqs+MMU_val
    movl $0, mmu_reqs+MMU_val+4
    call mmu_update1
    mov frame_mfn+F_DATA*4, %eax
    mov M2P_VIRT_START(,%eax,4), %eax
    check_eq machphys_restore, %eax, frame_pfn+F_DATA*4, "after restoring, the M2P entry of DATA is"

/* Step 13: switch to the new table. First make sure the updates refused above
 * left it as built (a hypervisor that let one through would leave a table the
 * guest cannot run on): L3 slot 3 still holds our top L2, slot 2 our L2.
 * Then TEST_VA, mapped only there, must read DATA's magic, and the M2P must
 * still be readable (Xen's slots in our top L2). */
step13_switch:
    entry_mfn windows+F_L3*PAGE_SIZE+3*8
    xor frame_mfn+F_L2TOP*4, %eax
    mov %eax, intact
    entry_mfn windows+F_L3*PAGE_SIZE+TEST_L3_SLOT*8
    xor frame_mfn+F_L2*4, %eax
    or %eax, intact
    check_eq new_table_intact, intact, $0, "(L3[3] ^ our top L2) | (L3[2] ^ our L2), frame numbers:"
    cmpl $0, intact
    jne step20_unpin
    mmuext MMUEXT_NEW_BASEPTR, frame_mfn+F_L3*4
    mov %eax, switch_rc
    check_eq new_baseptr, %eax, $0, "NEW_BASEPTR(new L3) returned"
    mov $TEST_VA, %eax
    call probe_read
    mov %eax, probe_value
    check_eq new_table_active_fault, %edx, $0, "page faults reading TEST_VA in the new table:"
    check_eq new_table_active, probe_value, $DATA_MAGIC, "TEST_VA reads"
    mov p2m, %eax
    mov (%eax), %eax                    /* m2p[mfn_list[0]] must be 0 */
    lea M2P_VIRT_START(,%eax,4), %eax
    call probe_read
    mov %eax, probe_value
    check_eq m2p_in_new_table_fault, %edx, $0, "page faults reading the M2P in the new table:"
    check_eq m2p_in_new_table, probe_value, $0, "m2p[mfn_list[0]] reads"
    cmpl $0, switch_rc
    jne step19_switch_back

/* Step 14: map DATA2 at TEST_VA + 1 page with mmu_update on the PTE's machine
 * address (entry 1 of our L1), read it, unmap it the same way, then flush the
 * stale TLB entry with MMUEXT_INVLPG_LOCAL. */
step14_mmu_update:
    req_ptr 0, F_L1, 1
    req_val 0, F_DATA2, PTE_RW
    call mmu_update1
    check_eq mmu_update_map, %eax, $0, "mmu_update(L1[1] = DATA2) returned"
    mov $TEST_VA + PAGE_SIZE, %eax
    call probe_read
    check_eq mmu_update_map_read, %eax, $DATA2_MAGIC, "TEST_VA + 0x1000 reads"
    req_ptr 0, F_L1, 1
    req_zero 0
    call mmu_update1
    check_eq mmu_update_unmap, %eax, $0, "mmu_update(L1[1] = 0) returned"
    mov windows+F_L1*PAGE_SIZE+8, %eax
    or windows+F_L1*PAGE_SIZE+12, %eax
    check_eq mmu_update_unmap_pte, %eax, $0, "L1[1] after the unmap is"
    mmuext MMUEXT_INVLPG_LOCAL, $TEST_VA + PAGE_SIZE
    check_eq invlpg_local, %eax, $0, "MMUEXT_INVLPG_LOCAL returned"

/* Step 15: touch the page just unmapped: #PF, not present, read from ring 1:
 * error code 0, CR2 the address, the frame's EIP the faulting instruction;
 * the handler skips it. */
step15_pf_not_present:
    movl $0, pf_count
    mov $TEST_VA + PAGE_SIZE, %eax
    call probe_read
    check_eq pf_not_present, %edx, $1, "page faults reading an unmapped page:"
    check_eq pf_not_present_error, pf_err, $0, "the error code (not present, read, kernel) is"
    check_eq pf_not_present_cr2, pf_cr2, $TEST_VA + PAGE_SIZE, "vcpu_info.arch.cr2 is"
    check_eq pf_not_present_rip, pf_eip, $probe_read_site, "the frame's EIP (want the faulting instruction) is"
    movzwl pf_cs, %eax
    check_eq pf_frame_cs, %eax, $FLAT_KERNEL_CS, "the frame's CS selector is"

/* Step 16: map DATA2 at TEST_VA + 2 pages with update_va_mapping(UVMF_INVLPG),
 * read it, unmap it the same way; the next touch faults. */
step16_uvm:
    mov $TEST_VA + 2*PAGE_SIZE, %eax
    pte_of F_DATA2, PTE_RW
    call uvm
    check_eq uvm_map, %eax, $0, "update_va_mapping(TEST_VA + 0x2000, DATA2) returned"
    mov $TEST_VA + 2*PAGE_SIZE, %eax
    call probe_read
    check_eq uvm_map_read, %eax, $DATA2_MAGIC, "TEST_VA + 0x2000 reads"
    entry_mfn windows+F_L1*PAGE_SIZE+16
    check_eq uvm_map_pte, %eax, frame_mfn+F_DATA2*4, "the frame in L1[2] is"
    mov $TEST_VA + 2*PAGE_SIZE, %eax
    xor %ecx, %ecx
    xor %edx, %edx
    call uvm
    check_eq uvm_unmap, %eax, $0, "update_va_mapping(TEST_VA + 0x2000, 0) returned"
    mov windows+F_L1*PAGE_SIZE+16, %eax
    or windows+F_L1*PAGE_SIZE+20, %eax
    check_eq uvm_unmap_pte, %eax, $0, "L1[2] after the unmap is"
    movl $0, pf_count
    mov $TEST_VA + 2*PAGE_SIZE, %eax
    call probe_read
    check_eq uvm_unmap_fault, %edx, $1, "page faults reading the unmapped page:"

/* Step 17: map DATA2 read-only at TEST_VA + 2 pages and write to it: #PF with
 * error code 3 (present, write). The handler maps the page writable with
 * update_va_mapping and returns to the faulting instruction, which then
 * completes: the value lands in DATA2. */
step17_pf_write:
    mov $TEST_VA + 2*PAGE_SIZE, %eax
    pte_of F_DATA2, PTE_RO
    call uvm
    check_eq uvm_map_ro, %eax, $0, "update_va_mapping(TEST_VA + 0x2000, DATA2 RO) returned"
    movl $TEST_VA + 2*PAGE_SIZE, pf_fix_va
    pte_of F_DATA2, PTE_RW
    mov %ecx, pf_fix_pte
    mov %edx, pf_fix_pte+4
    movl $-1, pf_fix_rc
    movl $0, pf_count
    mov $TEST_VA + 2*PAGE_SIZE + 4, %eax
    mov $WRITTEN_MAGIC, %edx
    call probe_write
    movl $0, pf_fix_va
    check_eq pf_write_ro, %edx, $1, "page faults writing a read-only page:"
    check_eq pf_write_ro_error, pf_err, $3, "the error code (present, write, kernel) is"
    check_eq pf_write_ro_cr2, pf_cr2, $TEST_VA + 2*PAGE_SIZE + 4, "vcpu_info.arch.cr2 is"
    check_eq pf_write_ro_fixup, pf_fix_rc, $0, "update_va_mapping in the #PF handler returned"
    check_eq pf_write_ro_retried, windows+F_DATA2*PAGE_SIZE+4, $WRITTEN_MAGIC, "after the retried write DATA2[1] holds"

/* Step 18: mmu_update reports in *done how many requests it completed. A
 * batch of two whose second request is refused (Xen's L2 slot) applies the
 * first, returns the error, and sets done to 1. */
step18_done:
    req_ptr 0, F_L1, 5
    req_val 0, F_DATA, PTE_RO
    req_ptr 1, F_L2TOP, PAE_L2_FIRST_XEN_SLOT
    req_val 1, F_L1, PDE
    movl $0xeeee, mmu_done
    mov $2, %ecx
    call mmu_update_n
    check_eq mmu_update_batch_error, %eax, $-EPERM, "mmu_update([good, top L2 slot 428]) returned"
    check_eq mmu_update_done, mmu_done, $1, "its done count is"
    entry_mfn windows+F_L1*PAGE_SIZE+40
    check_eq mmu_update_batch_first_applied, %eax, frame_mfn+F_DATA*4, "the frame in L1[5] (the first request) is"
    req_ptr 0, F_L1, 5
    req_zero 0
    call mmu_update1

/* Step 19: back to the boot table; TEST_VA is gone with the new table. */
step19_switch_back:
    mmuext MMUEXT_NEW_BASEPTR, boot_l3_mfn
    check_eq switch_back, %eax, $0, "NEW_BASEPTR(boot L3) returned"
    movl $0, pf_count
    mov $TEST_VA, %eax
    call probe_read
    check_eq switch_back_test_va_gone, %edx, $1, "page faults reading TEST_VA in the boot table:"

/* Step 20: unpin the new L3. Nothing references it any more, so Xen drops the
 * types of the whole tree: the frames may be mapped writable again. A second
 * unpin is -EINVAL. */
step20_unpin:
    mmuext MMUEXT_UNPIN_TABLE, frame_mfn+F_L3*4
    check_eq unpin, %eax, $0, "UNPIN_TABLE(new L3) returned"
    mmuext MMUEXT_UNPIN_TABLE, frame_mfn+F_L3*4
    check_eq unpin_twice_refused, %eax, $-EINVAL, "a second UNPIN_TABLE returned"
    movl $0, windows_rc
    .irp i, F_L3, F_L2TOP, F_L2, F_L1
    uvm_window \i, \i, PTE_RW
    test %eax, %eax
    jz 1f
    mov %eax, windows_rc
1:
    .endr
    check_eq unpin_releases_tree, windows_rc, $0, "update_va_mapping(former table frame, RW) returned"
    jmp step21_restore

no_pin:
    check_fail remaining, "not run: the new table could not be pinned"
    jmp step21_restore
no_windows:
    check_fail remaining, "not run: the windows could not be mapped"

/* Step 21: give the window pages back their own frames. */
step21_restore:
    movl $0, windows_rc
    xor %ebx, %ebx
1:  mov win_pfn(,%ebx,4), %eax
    mov p2m, %ecx
    mov (%ecx,%eax,4), %ecx             /* its mfn */
    mov %ecx, %edx
    shl $PAGE_SHIFT, %ecx
    shr $(32 - PAGE_SHIFT), %edx
    or $PTE_RW, %ecx
    mov %ebx, %eax
    shl $PAGE_SHIFT, %eax
    add $windows, %eax
    call uvm
    test %eax, %eax
    jz 2f
    mov %eax, windows_rc
2:  inc %ebx
    cmp $NWINDOWS, %ebx
    jb 1b
    check_eq restore_windows, windows_rc, $0, "update_va_mapping(window, its own frame) returned"
    jmp finish
    .size main, . - main

/* ---- routines ----------------------------------------------------------------- */

/* uvm(EAX = va, ECX:EDX = pte lo:hi): update_va_mapping(va, lo, hi,
 * UVMF_INVLPG). Returns EAX. */
    .type uvm, @function
uvm:
    push %ebx
    push %ecx
    push %edx
    push %esi
    mov %eax, %ebx
    mov $UVMF_INVLPG, %esi
    HYPERCALL __HYPERVISOR_update_va_mapping
    pop %esi
    pop %edx
    pop %ecx
    pop %ebx
    ret
    .size uvm, . - uvm

/* machphys_req(EAX = mfn): request 0's ptr = mfn's machine address |
 * MMU_MACHPHYS_UPDATE. Clobbers EAX. */
    .type machphys_req, @function
machphys_req:
    push %edx
    mov %eax, %edx
    shl $PAGE_SHIFT, %eax
    shr $(32 - PAGE_SHIFT), %edx
    or $MMU_MACHPHYS_UPDATE, %eax
    mov %eax, mmu_reqs+MMU_ptr
    mov %edx, mmu_reqs+MMU_ptr+4
    pop %edx
    ret
    .size machphys_req, . - machphys_req

/* mmu_update1: mmu_update of request 0 of mmu_reqs. mmu_update_n(ECX =
 * count): of the first ECX requests. DOMID_SELF; done count in mmu_done.
 * Return EAX. */
    .type mmu_update1, @function
mmu_update1:
    push %ecx
    mov $1, %ecx
    call mmu_update_n
    pop %ecx
    ret
    .size mmu_update1, . - mmu_update1

    .type mmu_update_n, @function
mmu_update_n:
    push %ebx
    push %ecx
    push %edx
    push %esi
    mov $mmu_reqs, %ebx
    mov $mmu_done, %edx
    mov $DOMID_SELF, %esi
    HYPERCALL __HYPERVISOR_mmu_update
    pop %esi
    pop %edx
    pop %ecx
    pop %ebx
    ret
    .size mmu_update_n, . - mmu_update_n

/* mmuext1(EAX = cmd, EDX = arg1): mmuext_op of one operation, DOMID_SELF.
 * Returns EAX. */
    .type mmuext1, @function
mmuext1:
    push %ebx
    push %ecx
    push %edx
    push %esi
    mov %eax, mmuext_arg+MMUEXT_cmd
    mov %edx, mmuext_arg+MMUEXT_arg1
    movl $0, mmuext_arg+MMUEXT_arg2
    mov $mmuext_arg, %ebx
    mov $1, %ecx
    xor %edx, %edx
    mov $DOMID_SELF, %esi
    HYPERCALL __HYPERVISOR_mmuext_op
    pop %esi
    pop %edx
    pop %ecx
    pop %ebx
    ret
    .size mmuext1, . - mmuext1

/* probe_read(EAX = va): EAX = the word at va, EDX = page faults taken (the
 * #PF handler skips the read if it faults; EAX is then 0). */
    .type probe_read, @function
probe_read:
    push %ecx
    mov pf_count, %edx
    mov %edx, probe_pf_before
    movl $probe_read_resume, pf_resume
    mov %eax, %ecx
    xor %eax, %eax
probe_read_site:
    mov (%ecx), %eax
probe_read_resume:
    movl $0, pf_resume
    mov pf_count, %edx
    sub probe_pf_before, %edx
    pop %ecx
    ret
    .size probe_read, . - probe_read

/* probe_write(EAX = va, EDX = value): store; EDX = page faults taken. */
    .type probe_write, @function
probe_write:
    push %ecx
    mov pf_count, %ecx
    mov %ecx, probe_pf_before
    movl $probe_write_resume, pf_resume
probe_write_site:
    mov %edx, (%eax)
probe_write_resume:
    movl $0, pf_resume
    mov pf_count, %edx
    sub probe_pf_before, %edx
    pop %ecx
    ret
    .size probe_write, . - probe_write

/*
 * trap_pf: the #PF handler. Ring 1 to ring 1, so the frame at ESP (from Xen)
 * is error code, EIP, CS, EFLAGS. It records the error code, EIP, CS and
 * CR2 (vcpu_info.arch.cr2), then either
 *   - pf_fix_va set: maps pf_fix_va to pf_fix_pte with update_va_mapping and
 *     returns to the faulting instruction (once: pf_fix_va is cleared), or
 *   - pf_resume set: returns to pf_resume, skipping the instruction, or
 *   - neither (or too many faults): reports an unexpected fault.
 * It drops the error code and jumps to the iret stub; Xen pops EAX, EIP, CS,
 * EFLAGS.
 */
    .balign 16
    .type trap_pf, @function
trap_pf:
    pusha
#define PF_SAVED 32                     /* the frame is at PF_SAVED(%esp) */
    incl pf_count
    mov PF_SAVED+BFE_err(%esp), %eax
    mov %eax, pf_err
    mov PF_SAVED+BFE_eip(%esp), %eax
    mov %eax, pf_eip
    mov PF_SAVED+BFE_cs(%esp), %eax
    mov %eax, pf_cs
    cmpl $0, shinfo_rc
    jne 1f                              /* shared_info is not mapped */
    mov shinfo_page+VCPU_cr2, %eax
    mov %eax, pf_cr2
1:  cmpl $PF_STORM, pf_count
    jae trap_pf_unexpected
    mov pf_fix_va, %ebx
    test %ebx, %ebx
    jz 2f
    mov pf_fix_pte, %ecx
    mov pf_fix_pte+4, %edx
    mov $UVMF_INVLPG, %esi
    HYPERCALL __HYPERVISOR_update_va_mapping
    mov %eax, pf_fix_rc
    movl $0, pf_fix_va
    jmp trap_pf_return
2:  mov pf_resume, %eax
    test %eax, %eax
    jz trap_pf_unexpected
    mov %eax, PF_SAVED+BFE_eip(%esp)
    jmp trap_pf_return
trap_pf_unexpected:
    movl $pf_unexpected, PF_SAVED+BFE_eip(%esp)
trap_pf_return:
    popa
    add $4, %esp                        /* the error code */
    jmp hypercall_page + __HYPERVISOR_iret * 32
    .size trap_pf, . - trap_pf

/* pf_unexpected: where trap_pf sends a fault nobody asked for. */
    .type pf_unexpected, @function
pf_unexpected:
    mov $stack_top, %esp
    check_fail_start page_fault, "unexpected #PF:"
    print_field "eip=", pf_eip
    print_field " cr2=", pf_cr2
    print_field " error=", pf_err
    print_field " faults=", pf_count
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
    .long trap_pf
    .long 0, 0

start_info_va:      .long 0
p2m:                .long 0             /* start_info.mfn_list: mfn_list[pfn], 4 bytes each */
shinfo_rc:          .long -1
boot_l3_mfn:        .long 0
boot_l2top_va:      .long 0
frame_pfn:          .fill NFRAMES, 4, 0
frame_mfn:          .fill NFRAMES, 4, 0
win_pfn:            .fill NWINDOWS, 4, 0 /* the pfn each window page had at boot */
windows_rc:         .long 0             /* last failed update of a window */
pin_rc:             .long -1
switch_rc:          .long -1
foreign_mfn:        .long 0
intact:             .long 0
probe_value:        .long 0
probe_pf_before:    .long 0
pf_count:           .long 0             /* faults taken by trap_pf */
pf_err:             .long -1            /* what the last fault's frame and vcpu_info said */
pf_eip:             .long 0
pf_cs:              .long 0
pf_cr2:             .long 0
pf_resume:          .long 0             /* where to resume after a fault (skip) */
pf_fix_va:          .long 0             /* or: map this VA ... */
pf_fix_pte:         .long 0, 0          /* ... to this PTE (lo, hi) and retry */
pf_fix_rc:          .long 0
    .balign 8
mmu_reqs:           .fill 2*MMU_UPDATE_SIZE, 1, 0 /* struct mmu_update[2] */
mmuext_arg:         .fill MMUEXT_OP_SIZE, 1, 0    /* struct mmuext_op */
mmu_done:           .long 0

/* ---- bss ---------------------------------------------------------------------- */
    .bss
    .balign PAGE_SIZE
windows:            .skip NWINDOWS*PAGE_SIZE /* re-pointed at our frames */
shinfo_page:        .skip PAGE_SIZE     /* shared_info is mapped here */
    .balign 16
stack:              .skip 16384
stack_top:
