# End to end over real sockets: examples/simple-03-websocket (chat rooms with
# presence) and examples/simple-04-sse (a live feed with channels) run under
# bin/pagi-server as a child process. WebSocket clients are raw sockets
# (t/lib/PAGI/Test/WebSocket.pm), SSE subscribers read the stream from raw
# sockets, and publishing goes through Net::Async::HTTP on its own connection.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(parse_responses);    # its import sets the alarm bounding this file
use PAGI::Test::CLI qw(start_cli stop_cli stderr_of http_raw wait_until);
use PAGI::Test::WebSocket qw(ws_connect);
use IO::Select;
use IO::Socket::IP;
use JSON::PP ();
use Net::Async::HTTP;
use Time::HiRes qw(time);

$SIG{PIPE} = 'IGNORE';
my $JSON = JSON::PP->new->utf8->canonical;
my $WAIT = 20;    # seconds for any one thing to arrive on a busy machine

# --- the chat ---------------------------------------------------------------

subtest 'chat rooms: presence, messages stay in their room' => sub {
    my $child = start_cli([ 'examples/simple-03-websocket/app.pl', '--no-access-log' ]);
    ok($child->{ready}, 'pagi-server runs the chat example') or return diag(stderr_of($child));
    my $port = $child->{port};
    my $join = sub {
        my ($room, $name) = @_;
        my ($ws) = eval { ws_connect($port, path => "/chat/$room?name=$name")->get };
        return $ws if $ws;
        fail("$name joins $room: $@");
        return;
    };
    my $next = sub {
        my ($ws, $what) = @_;
        my $f = eval { $ws->next_frame($WAIT)->get };
        return $f ? $JSON->decode($f->{payload}) : do { fail("$what: $@"); {} };
    };

    my $ann = $join->('red', 'Ann') or return;
    is_deeply($next->($ann, 'Ann\'s member list'), { type => 'members', room => 'red', members => ['Ann'] },
        'Ann, first in red, sees only herself');
    my $ben = $join->('red', 'Ben') or return;
    is_deeply($next->($ben, 'Ben\'s member list'), { type => 'members', room => 'red', members => [ 'Ann', 'Ben' ] },
        'Ben sees Ann and himself');
    is_deeply($next->($ann, 'the join notice'), { type => 'join', name => 'Ben', members => [ 'Ann', 'Ben' ] },
        'Ann is told that Ben joined');
    my $cat = $join->('blue', 'Cat') or return;
    is_deeply($next->($cat, 'Cat\'s member list'), { type => 'members', room => 'blue', members => ['Cat'] },
        'Cat is alone in blue');
    # Ann may use the same name in another room.
    my $ann_blue = $join->('blue', 'Ann') or return;
    is_deeply($next->($ann_blue, 'member list'), { type => 'members', room => 'blue', members => [ 'Ann', 'Cat' ] },
        'a name is unique per room only');
    is_deeply($next->($cat, 'the join notice'), { type => 'join', name => 'Ann', members => [ 'Ann', 'Cat' ] },
        'Cat is told');

    $ann->send_text('one');
    $ann->send_text('two');
    $cat->send_text('blue only');
    for my $who ([ 'Ben', $ben ], [ 'Ann', $ann ]) {
        is_deeply([ map { $next->($who->[1], "red message to $who->[0]") } 1 .. 2 ],
            [ map { { type => 'message', name => 'Ann', text => $_ } } 'one', 'two' ],
            "$who->[0] gets Ann's two messages in order");
    }
    for my $who ([ 'Cat', $cat ], [ 'Ann in blue', $ann_blue ]) {
        is_deeply($next->($who->[1], "blue message to $who->[0]"), { type => 'message', name => 'Cat', text => 'blue only' },
            "$who->[0] gets Cat's message");
    }
    # A round trip in red after the blue message: had it leaked, it would be queued before this.
    $ben->send_text('sync');
    is_deeply($next->($ann, 'sync'), { type => 'message', name => 'Ben', text => 'sync' }, 'Ann hears Ben');
    is_deeply($next->($ben, 'sync echo'), { type => 'message', name => 'Ben', text => 'sync' }, 'Ben hears himself');
    is($ann->pending + $ben->pending, 0, 'nothing from blue reached red');
    is($cat->pending + $ann_blue->pending, 0, 'nothing from red reached blue');

    $ben->send_close(1000);
    is_deeply($next->($ann, 'the leave notice'), { type => 'leave', name => 'Ben', members => ['Ann'] },
        'when Ben disconnects, Ann is told, with the members left');
    is($cat->pending, 0, 'blue hears nothing of it');
    my ($rooms) = parse_responses(http_raw($port, "GET /rooms HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
    is($rooms && $rooms->{body}, '{"blue":["Ann","Cat"],"red":["Ann"]}', 'GET /rooms agrees');

    $_->send_close(1000) for $ann, $cat, $ann_blue;
    ok(eval { $_->wait_eof($WAIT)->get for $ann, $cat, $ann_blue; 1 }, 'everyone leaves') or diag($@);
    is(stop_cli($child), 0, 'SIGTERM: exit status 0');
    unlike($child->{stderr}, qr/\berror\b/i, 'no errors logged') or diag($child->{stderr});
};

# --- the feed ---------------------------------------------------------------

# A subscriber: a raw socket reading an SSE stream. ->wait(\&cond) reads until
# cond(@events) holds; ->events returns every complete event so far.
sub subscribe {
    my ($port, $path, @headers) = @_;
    my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 5) or die "connect: $@";
    syswrite $sock, "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
        . join('', map { "$_\r\n" } @headers) . "\r\n";
    return bless { sock => $sock, buf => '' }, 'Subscriber';
}

sub Subscriber::events {
    my ($self) = @_;
    my ($body) = $self->{buf} =~ /\r\n\r\n(.*)\z/s;
    my $stream = join '', ($body // '') =~ /\G[0-9a-fA-F]+\r\n(.*?)\r\n/gs;    # unchunk
    my @events;
    for my $block (split /\n\n/, $stream) {
        my %e;
        for (split /\n/, $block) { $e{$1} = $2 if /\A([^:]+): ?(.*)\z/ }
        push @events, \%e if %e;
    }
    pop @events unless $stream =~ /\n\n\z/;    # the last one may be incomplete
    return @events;
}

sub Subscriber::wait {
    my ($self, $cond) = @_;
    my $sel = IO::Select->new($self->{sock});
    my $deadline = time + $WAIT;
    until ($cond->($self->events)) {
        my $left = $deadline - time;
        return 0 if $left <= 0 || !$sel->can_read($left);
        sysread($self->{sock}, $self->{buf}, 65536, length $self->{buf}) or return 0;
    }
    return 1;
}

sub Subscriber::of { my ($self, $event) = @_; grep { ($_->{event} // '') eq $event } $self->events }

subtest 'live feed: publish on one connection, events on the subscribers, ids and Last-Event-ID' => sub {
    my $child = start_cli([ 'examples/simple-04-sse/app.pl', '--no-access-log' ]);
    ok($child->{ready}, 'pagi-server runs the feed example') or return diag(stderr_of($child));
    my $port = $child->{port};
    my $loop = PAGI::Test::Server::loop();
    my $http = Net::Async::HTTP->new(max_connections_per_host => 1);
    $loop->add($http);
    my $publish = sub {
        my ($channel, $text) = @_;
        my $res = eval { $http->POST("http://127.0.0.1:$port/publish/$channel", $text, content_type => 'text/plain')
            ->get };
        return $res ? ($res->code, $res->decoded_content) : (0, "$@");
    };

    my $news = subscribe($port, '/events/news');
    my $sports = subscribe($port, '/events?channel=sports');
    ok($news->wait(sub { grep { ($_->{event} // '') eq 'subscribed' } @_ }), 'a news subscriber is connected');
    ok($sports->wait(sub { grep { ($_->{event} // '') eq 'subscribed' } @_ }), 'a sports subscriber is connected');

    my @ids;
    for my $text ('first', 'second') {
        my ($code, $body) = $publish->(news => $text);
        is($code, 202, "POST /publish/news '$text': 202");
        my $answer = eval { $JSON->decode($body) } || {};
        is_deeply([ @$answer{qw(channel subscribers)} ], [ 'news', 1 ], 'one news subscriber reached') or diag($body);
        push @ids, $answer->{id};
    }
    cmp_ok($ids[1], '>', $ids[0], 'ids increase');
    my ($code, $body) = $publish->(sports => 'goal');
    is($code, 202, 'POST /publish/sports: 202');
    my $goal_id = (eval { $JSON->decode($body) } || {})->{id};

    ok($news->wait(sub { 2 == grep { ($_->{event} // '') eq 'news' } @_ }), 'both news events arrive');
    is_deeply([ map { [ $_->{id}, $_->{data} ] } $news->of('news') ], [ [ $ids[0], 'first' ], [ $ids[1], 'second' ] ],
        'in order, with the ids the publisher was given');
    ok($sports->wait(sub { grep { ($_->{event} // '') eq 'sports' } @_ }), 'the sports event arrives');
    is_deeply([ map { [ $_->{id}, $_->{data} ] } $sports->of('sports') ], [ [ $goal_id, 'goal' ] ],
        'only the sports event reaches the sports subscriber');
    is(scalar $news->of('sports'), 0, 'and not the news one');

    # A reconnect that saw only the first event: it gets the second, then live ones.
    close $news->{sock};
    my $again = subscribe($port, '/events/news', "Last-Event-ID: $ids[0]");
    ok($again->wait(sub { grep { ($_->{event} // '') eq 'news' } @_ }), 'a reconnect with Last-Event-ID gets events');
    is_deeply([ map { [ $_->{id}, $_->{data} ] } $again->of('news') ], [ [ $ids[1], 'second' ] ],
        'exactly the missed one: not the first, not the sports event');
    ($code, $body) = $publish->(news => 'third');
    my $third_id = (eval { $JSON->decode($body) } || {})->{id};
    ok($again->wait(sub { 2 == grep { ($_->{event} // '') eq 'news' } @_ }), 'then the live events');
    is_deeply([ map { $_->{id} } $again->of('news') ], [ $ids[1], $third_id ], 'with no gap and no repeat');

    my $ticks = subscribe($port, '/events/tick');
    ok($ticks->wait(sub { 2 <= grep { ($_->{event} // '') eq 'tick' } @_ }), 'the tick channel ticks');
    my @t = map { $JSON->decode($_->{data}) } $ticks->of('tick');
    is($t[1]{n}, $t[0]{n} + 1, 'counting up');
    cmp_ok(($ticks->of('tick'))[0]{id}, '>', $third_id, 'its ids share the one sequence');

    close $_->{sock} for $again, $sports, $ticks;
    $loop->remove($http);
    is(stop_cli($child), 0, 'SIGTERM: exit status 0');
    unlike($child->{stderr}, qr/\berror\b/i, 'no errors logged') or diag($child->{stderr});
};

done_testing;
