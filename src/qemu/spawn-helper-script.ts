/**
 * The spawn helper's program, run as `perl -e` (perl-base is essential on Debian, so it is always there; POSIX
 * is part of it). One helper per Node process forks every QEMU: it is a few MB, so its fork is cheap, and Node's
 * event loop does not wait for the exec.
 *
 * Protocol, one line per message, fields separated by one space, arbitrary bytes hex-encoded:
 * - in:  `spawn ID STDERR_PATH_HEX ENV_COUNT ENV_HEX... ARGV_HEX...` (ENV entries are `NAME=value`)
 * - in:  `kill PID SIGNAL_NUMBER` (ignored unless PID is a child not yet reaped, so a reused pid is never hit)
 * - out: `spawned ID PID` once the child has exec'd, or `failed ID MESSAGE_HEX`
 * - out: `exit PID CODE SIGNAL_NUMBER` when a child is reaped (CODE -1 when a signal ended it)
 * End of input (the Node process is gone) ends the helper; its children get SIGKILL from their parent-death signal,
 * which each child asks for itself between fork and exec (argument 1: the number of the prctl system call, 0 where
 * it is not known), so no child can outlive the helper, not even one started a moment before the helper died.
 */
export const SPAWN_HELPER_SCRIPT = String.raw`
use strict;
use warnings;
use POSIX qw(:sys_wait_h);
$| = 1;
my %live;
my $prctl = $ARGV[0] // 0;
pipe(my $wake_r, my $wake_w) or die "pipe: $!";
$SIG{CHLD} = sub { syswrite($wake_w, "x") };
$SIG{PIPE} = 'IGNORE';
sub dehex { return pack('H*', $_[0]) }
sub say_line { print STDOUT $_[0], "\n" }
sub reap {
  while ((my $pid = waitpid(-1, WNOHANG)) > 0) {
    my $status = $?;
    delete $live{$pid};
    if (WIFSIGNALED($status)) { say_line("exit $pid -1 " . WTERMSIG($status)) }
    else { say_line("exit $pid " . WEXITSTATUS($status) . " 0") }
  }
}
sub spawn_child {
  my ($id, @fields) = @_;
  my $stderr_path = dehex(shift @fields);
  my $env_count = shift @fields;
  my @env = map { dehex($_) } splice(@fields, 0, $env_count);
  my @argv = map { dehex($_) } @fields;
  my ($err_r, $err_w);
  if (!pipe($err_r, $err_w)) { say_line("failed $id " . unpack('H*', "pipe: $!")); return }
  my $helper = $$;
  my $pid = fork();
  if (!defined $pid) { say_line("failed $id " . unpack('H*', "fork: $!")); return }
  if ($pid == 0) {
    close $err_r;
    # PR_SET_PDEATHSIG (1) to SIGKILL (9); if the helper died before that, it was never going to come.
    if ($prctl) { syscall($prctl, 1, 9); POSIX::_exit(127) if getppid() != $helper }
    $SIG{CHLD} = 'DEFAULT';
    $SIG{PIPE} = 'DEFAULT';
    open(STDIN, '<', '/dev/null');
    open(STDOUT, '>', '/dev/null');
    if (!open(STDERR, '>>', $stderr_path)) { syswrite($err_w, "open $stderr_path: $!"); POSIX::_exit(127) }
    %ENV = map { split(/=/, $_, 2) } @env;
    # perl marks descriptors above 2 close-on-exec, so $err_w closes when exec succeeds.
    { no warnings 'exec'; exec { $argv[0] } @argv; }
    syswrite($err_w, "exec $argv[0]: $!");
    POSIX::_exit(127);
  }
  close $err_w;
  my $message = '';
  while (1) {
    my $got = sysread($err_r, $message, 4096, length $message);
    if (!defined $got) { next if $!{EINTR}; last }
    last if $got == 0;
  }
  close $err_r;
  if (length $message) {
    waitpid($pid, 0);
    say_line("failed $id " . unpack('H*', $message));
    return;
  }
  $live{$pid} = 1;
  say_line("spawned $id $pid");
}
my $input = '';
while (1) {
  reap();
  my $read_bits = '';
  vec($read_bits, fileno(STDIN), 1) = 1;
  vec($read_bits, fileno($wake_r), 1) = 1;
  # The timeout only backs up the wake pipe against a signal landing just before select starts.
  my $ready = select(my $out_bits = $read_bits, undef, undef, 0.5);
  next if $ready <= 0;
  if (vec($out_bits, fileno($wake_r), 1)) { my $drain; sysread($wake_r, $drain, 4096) }
  next unless vec($out_bits, fileno(STDIN), 1);
  my $got = sysread(STDIN, $input, 65536, length $input);
  if (!defined $got) { next if $!{EINTR}; last }
  last if $got == 0;
  while ($input =~ s/^([^\n]*)\n//) {
    my ($command, @fields) = split(/ /, $1);
    if ($command eq 'spawn') { spawn_child(@fields) }
    elsif ($command eq 'kill') { my ($pid, $signal) = @fields; kill($signal, $pid) if $live{$pid} }
  }
}
kill('KILL', keys %live);
exit 0;
`;
