# The app of the groups cluster tests (t/groups-cluster*.t), run by
# bin/pagi-server on several nodes (workers or processes) sharing one Redis.
#
# WebSocket /ws?join=G1,G2&tag=T: accepts, joins the groups, sends
# "H:{pid,node}", then runs JSON commands from the client and answers each
# with "R:[ok, result or error]":
#   {op:'bcast', group, text}            groups.publish with exclude_self
#   {op:'pub', group, text, event, id}   groups.publish
#   {op:'flood', group, from, count, size}
#                                        `count` binary publishes of `size`
#                                        bytes, each starting with its
#                                        8-digit number (from, from+1, ...);
#                                        with burst: all sent, then awaited
#   {op:'cluster', group}                $hub->cluster_count
#   {op:'stats'}                         {pid, node, stats, disconnects}
# Every other frame the client gets is a group message.
# SSE /sse?join=G1,G2: sse.start, joins, then the comment "joined PID".
# The disconnect events of WebSocket connections ({tag, code, reason}) are
# kept for the stats command (so a test sees the 1008 of a dropped member).
use strict;
use warnings;
use Future;
use Future::AsyncAwait;
use JSON::PP ();

my $json = JSON::PP->new->canonical;
my @disconnects;

sub query {
    my ($scope) = @_;
    return map {
        my ($k, $v) = split /=/, $_, 2;
        $v = '' unless defined $v;
        $v =~ s/%([0-9A-Fa-f]{2})/chr hex $1/ge;
        ($k => $v);
    } split /&/, $scope->{query_string} // '';
}

async sub run_command {
    my ($cmd, $send, $hub) = @_;
    my $op = $cmd->{op} // '';
    if ($op eq 'bcast') {
        return await $send->({ type => 'groups.publish', group => $cmd->{group}, text => $cmd->{text}, exclude_self => 1 });
    }
    if ($op eq 'pub') {
        return await $send->({ type => 'groups.publish', map { defined $cmd->{$_} ? ($_ => $cmd->{$_}) : () } qw(group text event id) });
    }
    if ($op eq 'flood') {
        my ($n, @pending) = (0);
        for my $i ($cmd->{from} .. $cmd->{from} + $cmd->{count} - 1) {
            my $bytes = sprintf('%08d', $i) . ('x' x ($cmd->{size} - 8));
            my $f = $send->({ type => 'groups.publish', group => $cmd->{group}, bytes => $bytes });
            # burst: all sent at once, then awaited; else one after another.
            if ($cmd->{burst}) { push @pending, $f } else { $n += await $f }
        }
        $n += $_ for await Future->needs_all(@pending);
        return $n;
    }
    if ($op eq 'cluster') {
        return await $hub->cluster_count($cmd->{group});
    }
    if ($op eq 'stats') {
        return { pid => $$, node => $hub->node, stats => $hub->stats, disconnects => \@disconnects };
    }
    die "unknown op '$op'\n";
}

my $app = async sub {
    my ($scope, $receive, $send) = @_;
    my $type = $scope->{type};
    if ($type eq 'lifespan') {
        while (1) {
            my $ev = await $receive->();
            if ($ev->{type} eq 'lifespan.startup') { await $send->({ type => 'lifespan.startup.complete' }) }
            elsif ($ev->{type} eq 'lifespan.shutdown') { await $send->({ type => 'lifespan.shutdown.complete' }); return }
        }
    }
    my $groups = $scope->{extensions}{groups} or die "no groups extension\n";
    my %q = query($scope);
    my @join = grep { length } split /,/, $q{join} // '';
    if ($type eq 'websocket') {
        await $receive->();    # websocket.connect
        await $send->({ type => 'websocket.accept' });
        for my $g (@join) { await $send->({ type => "groups.join", group => $g }) }
        await $send->({ type => 'websocket.send', text => 'H:' . $json->encode({ pid => $$, node => $groups->{node} }) });
        while (1) {
            my $ev = await $receive->();
            if ($ev->{type} eq 'websocket.disconnect') {
                push @disconnects, { tag => $q{tag} // '', code => $ev->{code}, reason => $ev->{reason} // '' };
                return;
            }
            next unless defined $ev->{text};
            my $r = eval { [ 1, await run_command($json->decode($ev->{text}), $send, $groups->{hub}) ] } // [ 0, "$@" ];
            await $send->({ type => 'websocket.send', text => 'R:' . $json->encode($r) });
        }
    }
    if ($type eq 'sse') {
        await $receive->();    # sse.request
        await $send->({ type => 'sse.start' });
        for my $g (@join) { await $send->({ type => "groups.join", group => $g }) }
        await $send->({ type => 'sse.comment', comment => "joined $$" });
        while (1) {
            my $ev = await $receive->();
            return if $ev->{type} eq 'sse.disconnect';
        }
    }
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
    await $send->({ type => 'http.response.body', body => "pid $$" });
};

$app;
