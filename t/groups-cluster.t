# Groups across nodes through Redis (issue 13): `pagi-server --workers 2
# --pubsub redis://...`, and separately two pagi-server processes on one
# Redis, each with WebSocket members on both nodes. A broadcast from any
# member (exclude_self) reaches every other member exactly once and not
# itself; SSE members on both nodes get published events with their event and
# id fields; cluster_count counts the members of both nodes. The Redis is
# this file's own (PAGI::Test::Redis), on a free loopback port.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(loop wait_for);    # its import arms the file's alarm
use PAGI::Test::CLI qw(stop_cli stderr_of);
use PAGI::Test::Redis qw(need_redis);
use PAGI::Test::GroupsCluster qw(start_node member cmd cmd_ok group_texts sse_member sse_events until_crossed settle by_pid);

$SIG{PIPE} = 'IGNORE';
need_redis();
my $redis = PAGI::Test::Redis->start;

# Connects with $connect->() until both of the two nodes have at least $per
# members (at most $max connections: the kernel picks the worker). Returns
# the members (all of them stay connected and take part).
sub spread {
    my ($connect, $per, $max) = @_;
    my @m;
    while (@m < $max) {
        push @m, $connect->();
        my $by = by_pid(@m);
        last if keys %$by == 2 && !grep { @$_ < $per } values %$by;
    }
    return @m;
}

sub cluster_checks {
    my ($label, $ws_connect, $sse_connect) = @_;
    my @m = spread(sub { $ws_connect->('room') }, 2, 40);
    my $by = by_pid(@m);
    is(scalar keys %$by, 2, "$label: WebSocket members on both nodes (" . join(' + ', map { scalar @$_ } values %$by) . ')')
        or return;
    my ($pa, $pb) = sort keys %$by;
    my %node = map { $_->{pid} => $_->{node} } @m;
    like($node{$_}, qr/:$_:/, "$label: node id of $_ names its pid") for $pa, $pb;
    isnt($node{$pa}, $node{$pb}, "$label: two node ids");

    # Each node's subscription to the room is in place once a probe from the other node arrived.
    ok(until_crossed($by->{$pa}[0], $by->{$pb}, 'room'), "$label: a message from node A reaches node B's members");
    ok(until_crossed($by->{$pb}[0], $by->{$pa}, 'room'), "$label: and from B reaches A's");

    my $total = @m;
    for my $pid ($pa, $pb) {
        my $n;
        ok(wait_for(sub { ($n = cmd_ok($by->{$pid}[0], op => 'cluster', group => 'room')) == $total }, 10),
            "$label: cluster_count from node $pid sees all $total members") or diag("got $n");
    }

    # Every member broadcasts once.
    my $bad = 0;
    for my $i (0 .. $#m) {
        my ($ok, $n) = cmd($m[$i], op => 'bcast', group => 'room', text => "m:$i");
        my $local = @{ $by->{ $m[$i]{pid} } } - 1;
        $bad++, diag("member $i: publish answered " . ($ok ? "$n, not $local" : "error $n")) unless $ok && $n == $local;
    }
    is($bad, 0, "$label: each broadcast resolved to its node's other members");
    my $got_all = wait_for(sub { !grep { group_texts($_, qr/\Am:/) < $total - 1 } @m }, 20);
    ok($got_all, "$label: every member got the " . ($total - 1) . " broadcasts of the others");
    settle();
    my @wrong;
    for my $i (0 .. $#m) {
        my @got = sort { substr($a, 2) <=> substr($b, 2) } group_texts($m[$i], qr/\Am:/);
        my @want = map { "m:$_" } grep { $_ != $i } 0 .. $#m;
        push @wrong, "member $i (pid $m[$i]{pid}) got [@got]" unless "@got" eq "@want";
    }
    is(scalar @wrong, 0, "$label: exactly once each, and none its own") or diag(join "\n", @wrong);

    # SSE members on both nodes.
    my @s = spread(sub { $sse_connect->('feed') }, 1, 30);
    my $sby = by_pid(@s);
    is(scalar keys %$sby, 2, "$label: SSE members on both nodes (" . join(' + ', map { scalar @$_ } values %$sby) . ')')
        or return;
    ok(until_crossed($by->{$pa}[0], $sby->{$pb} // [], 'feed'), "$label: a message from node A reaches B's SSE members");
    ok(until_crossed($by->{$pb}[0], $sby->{$pa} // [], 'feed'), "$label: and from B reaches A's");
    my $id = 0;
    for my $pid ($pa, $pb) {
        my $n = cmd_ok($by->{$pid}[0], op => 'pub', group => 'feed', text => "from $pid", event => 'tick', id => ++$id);
        is($n, scalar @{ $sby->{$pid} || [] }, "$label: publish on node $pid resolved to its SSE members");
    }
    my $events = sub { grep { ($_->{event} // '') eq 'tick' } sse_events($_[0]) };
    ok(wait_for(sub { !grep { $events->($_) < 2 } @s }, 20), "$label: every SSE member got both events");
    settle();
    my @sse_wrong;
    for my $s (@s) {
        my $got = join ' | ', map { "$_->{event}/$_->{id}/$_->{data}" } $events->($s);
        my $want = "tick/1/from $pa | tick/2/from $pb";
        push @sse_wrong, "SSE member on $s->{pid}: $got" unless $got eq $want;
    }
    is(scalar @sse_wrong, 0, "$label: each SSE member got each event once, with event and id, in order")
        or diag(join "\n", @sse_wrong);
    for my $pid ($pa, $pb) {
        my $n;
        ok(wait_for(sub { ($n = cmd_ok($by->{$pid}[0], op => 'cluster', group => 'feed')) == @s }, 10),
            "$label: cluster_count of the feed from node $pid: " . scalar @s) or diag("got $n");
    }
    $_->{c}->close for @m;
    $_->{conn}->close for @s;
}

subtest 'pagi-server --workers 2 --pubsub' => sub {
    my $node = start_node('--workers', 2, '--pubsub', $redis->url);
    # The master listens before it logs the banner.
    my $banner = qr/groups \(rooms and channels\) cross processes through redis:\/\/127\.0\.0\.1:${\ $redis->port }\b/;
    ok(PAGI::Test::CLI::wait_until(sub { stderr_of($node) =~ $banner }, 10), 'the banner names the Redis') or diag(stderr_of($node));
    cluster_checks('workers',
        sub { member($node->{port}, join => $_[0]) },
        sub { sse_member($node->{port}, $_[0]) });
    is(stop_cli($node), 0, 'SIGTERM: exits 0');
    unlike($node->{stderr}, qr/panic|pubsub: lost/i, 'no panic, Redis never lost') or diag($node->{stderr});
};

subtest 'two pagi-server processes on one Redis' => sub {
    my @nodes = map { start_node('--pubsub', $redis->url) } 1 .. 2;
    my ($ws_turn, $sse_turn) = (0, 0);
    cluster_checks('processes',
        sub { member($nodes[ $ws_turn++ % 2 ]{port}, join => $_[0]) },
        sub { sse_member($nodes[ $sse_turn++ % 2 ]{port}, $_[0]) });
    for my $i (0, 1) {
        is(stop_cli($nodes[$i]), 0, "process $i: SIGTERM: exits 0");
        unlike($nodes[$i]{stderr}, qr/panic|pubsub: lost/i, "process $i: no panic, Redis never lost") or diag($nodes[$i]{stderr});
    }
    # Each node removed its presence on the way out.
    my $keys = $redis->command(KEYS => 'pagi:p:*');
    is_deeply($keys, [], 'no presence left in Redis after both stopped');
};

$redis->stop;
done_testing;
