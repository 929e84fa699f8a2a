/* Guest instruction counter with in-guest markers (qemu TCG plugin API v1).
 *
 * Counts executed guest instructions (each translation block adds its
 * instruction count inline whenever it runs). A guest that issues the
 * otherwise unused syscall number MARK_SYSCALL (it fails with ENOSYS) gets
 * a line "mark <arg0> <count so far>" in the plugin log; "total <count>" is
 * written at exit. Glib-free: only qemu-plugin.h is needed to build. */
#include <inttypes.h>
#include <stdio.h>
#include <qemu-plugin.h>

#define MARK_SYSCALL 0x7A51

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

static uint64_t insn_count;

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    qemu_plugin_register_vcpu_tb_exec_inline(
        tb, QEMU_PLUGIN_INLINE_ADD_U64, &insn_count,
        qemu_plugin_tb_n_insns(tb));
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num,
                       uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4,
                       uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    if (num == MARK_SYSCALL) {
        char buf[96];
        snprintf(buf, sizeof buf, "mark %" PRIu64 " %" PRIu64 "\n",
                 a1, insn_count);
        qemu_plugin_outs(buf);
    }
}

static void at_exit(qemu_plugin_id_t id, void *p)
{
    char buf[64];
    snprintf(buf, sizeof buf, "total %" PRIu64 "\n", insn_count);
    qemu_plugin_outs(buf);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id,
                                           const qemu_info_t *info,
                                           int argc, char **argv)
{
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
