# A member that never reads, on one of two nodes sharing Redis (issue 13):
# a raw WebSocket client on node B stops reading while 64 KiB binary
# messages are published in turns from node A (reaching B through Redis)
# and from node B itself. Two readers on each node get every message, in
# order and once, keeping up batch after batch; the silent member is dropped
# by node B (stats dropped 1, its app sees websocket.disconnect 1008 "too
# slow for group messages") and leaves the cluster count; node A drops nobody.
# Then bursts larger than group_max_buffered, from each node, reach every
# reader without dropping any.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(loop wait_for);    # its import arms the file's alarm
use PAGI::Test::CLI qw(stop_cli);
use PAGI::Test::Redis qw(need_redis);
use PAGI::Test::GroupsCluster qw(start_node member cmd cmd_ok until_crossed settle stats_of);
use Socket ();

$SIG{PIPE} = 'IGNORE';
need_redis();
my $MSG   = 64 * 1024;
my $BATCH = 8;     # messages per flood command (512 KiB)
my $MAX   = 256 * 1024;
my $redis = PAGI::Test::Redis->start;
my ($na, $nb) = map { start_node('--pubsub', $redis->url, '--group-max-buffered', $MAX) } 1 .. 2;

# A member that reads and counts the binary messages, keeping no payloads.
sub reader {
    my ($node, $tag) = @_;
    my $m = member($node->{port}, join => 'fan', tag => $tag);
    @$m{qw(n bad)} = (0, 0);
    $m->{c}->on_frame(sub {
        my ($f) = @_;
        return unless $f->{opcode} == 2;
        $m->{bad}++ unless $f->{length} == $MSG && substr($f->{payload}, 0, 8) eq sprintf('%08d', $m->{n});
        $m->{n}++;
        delete $f->{payload};
    });
    return $m;
}

my @readers = (reader($na, 'ra1'), reader($na, 'ra2'), reader($nb, 'rb1'), reader($nb, 'rb2'));
my $slow = member($nb->{port}, join => 'fan', tag => 'slow');
# A small receive buffer, then no reading at all: the kernel holds little for it.
setsockopt($slow->{c}{sock}, Socket::SOL_SOCKET(), Socket::SO_RCVBUF(), 64 * 1024);
$slow->{c}->pause;
my ($ca, $cb) = (member($na->{port}, tag => 'ca'), member($nb->{port}, tag => 'cb'));    # publishers, not members
ok(until_crossed($ca, [ @readers[2, 3] ], 'fan'), 'A reaches B');
ok(until_crossed($cb, [ @readers[0, 1] ], 'fan'), 'B reaches A');
my $n;
ok(wait_for(sub { ($n = cmd_ok($ca, op => 'cluster', group => 'fan')) == 5 }, 10), 'cluster_count 5') or diag("got $n");

my ($sent, $batches, $kept_up, $after_drop, @answers) = (0, 0, 1, 0);
while ($batches < 64 && $after_drop < 3) {
    my $from = $batches++ % 2 ? $cb : $ca;
    my ($ok, $n) = cmd($from, op => 'flood', group => 'fan', from => $sent, count => $BATCH, size => $MSG);
    push @answers, $ok ? "$from->{tag}:" . ($n / $BATCH) : "$from->{tag}:error $n";
    $sent += $BATCH;
    # Each batch reaches every reader before the next is sent: only the
    # member that does not read falls behind.
    $kept_up &&= wait_for(sub { !grep { $_->{n} < $sent } @readers }, 30);
    last unless $kept_up;
    $after_drop++ if $after_drop || stats_of($cb)->{stats}{dropped};
}
note("$batches batches of $BATCH x 64 KiB; members per publish: @answers");
ok($kept_up, "the readers got each batch before the next ($sent messages, " . $sent * $MSG / 2**20 . ' MiB each)')
    or diag(join ', ', map { "$_->{tag}: $_->{n}" } @readers);
ok($after_drop, 'the silent member was dropped on the way');
for my $r (@readers) {
    is($r->{n}, $sent, "$r->{tag}: all $sent messages");
    is($r->{bad}, 0, "$r->{tag}: in order, each once and whole");
}
# A flood on B counts the silent member until it is dropped (maybe midway through a batch).
my ($bad_answers, $b_dropped) = (0, 0);
for (@answers) {
    my ($who, $per) = /\A(ca|cb):([\d.]+)\z/ or ($bad_answers++, next);
    if ($who eq 'ca') { $bad_answers++ unless $per == 2; next }
    $bad_answers++ unless $per == 3 && !$b_dropped || $per >= 2 && $per < 3 && !$b_dropped++ || $per == 2;
    $b_dropped = 1 if $per == 2;
}
is($bad_answers, 0, "each publish reached its own node's members (A: 2; B: 3, then 2)");
my ($sa, $sb) = map { stats_of($_) } $ca, $cb;
is($sb->{stats}{dropped}, 1, 'node B: dropped 1');
is($sa->{stats}{dropped}, 0, 'node A: dropped 0');
my ($gone) = grep { $_->{tag} eq 'slow' } @{ $sb->{disconnects} };
is($gone && $gone->{code}, 1008, 'its app saw websocket.disconnect 1008');
is($gone && $gone->{reason}, 'too slow for group messages', '... too slow for group messages');
ok(wait_for(sub { ($n = cmd_ok($ca, op => 'cluster', group => 'fan')) == 4 }, 10), 'it left the group: cluster_count 4') or diag("got $n");
$slow->{c}->resume;
ok($slow->{c}->wait_eof(10)->get, 'the silent client finds its connection closed once it reads');

# A burst: 16 publishes sent at once (1 MiB, 4 x group_max_buffered), from
# each node in turn. They are fanned out together (one batch of commands
# on the publishing node, messages read from Redis together on the other),
# and readers that keep up must not look slow for it.
for my $from ($cb, $ca) {
    my ($ok, $n) = cmd($from, op => 'flood', group => 'fan', from => $sent, count => 16, size => $MSG, burst => 1);
    $sent += 16;
    is($ok && $n, 32, "a burst of 16 from $from->{tag}: queued for its node's 2 readers");
    ok(wait_for(sub { !grep { $_->{n} < $sent } @readers }, 30), "... and all four readers got it")
        or diag(join ', ', map { "$_->{tag}: $_->{n}" } @readers);
}
is($_->{bad}, 0, "$_->{tag}: still in order") for @readers;
is(stats_of($ca)->{stats}{dropped} + stats_of($cb)->{stats}{dropped}, 1, 'nobody else was dropped');

$_->{c}->close for @readers, $slow, $ca, $cb;
is(stop_cli($_), 0, 'SIGTERM: exits 0') for $na, $nb;
$redis->stop;
done_testing;
