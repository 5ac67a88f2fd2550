# PAGI::Simple::PubSub: the in-memory implementation of the interface
# (channels, exclusion, rooms, callback errors), the per-process instance,
# the interface refusing unimplemented methods, and a replacement backend
# that WebSocket rooms and SSE channels really go through (in process,
# through PAGI::Test::Client).
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Simple qw(client);
use PAGI::Simple;
use PAGI::Simple::PubSub;
use PAGI::Simple::PubSub::Memory;

local $SIG{ALRM} = sub { die "simple-pubsub.t: timed out\n" };
alarm 60;

my $hub = PAGI::Simple::PubSub::Memory->new;
my @got;
my $id1 = $hub->subscribe(news => sub ($m, $ch) { push @got, "1:$ch:$m" });
my $id2 = $hub->subscribe(news => sub ($m, $ch) { push @got, "2:$ch:$m" });
isnt($id1, $id2, 'distinct subscription ids');
is($hub->publish(news => 'a'), 2, 'publish returns the receiver count');
is($hub->publish(news => 'b', exclude => $id1), 1, 'exclude skips one subscriber');
is(join(',', @got), '1:news:a,2:news:a,2:news:b', 'callbacks get message and channel, in order');
is($hub->subscribers('news'), 2, 'subscribers');
is_deeply($hub->channels, ['news'], 'channels');
$hub->unsubscribe(news => $id1);
is($hub->publish(news => 'c'), 1, 'unsubscribe');
$hub->unsubscribe_all($id2);
ok(!$hub->has_channel('news'), 'unsubscribe_all empties the channel');
is($hub->publish(nobody => 'x'), 0, 'publishing to an empty channel reaches nobody');

my @warn;
local $SIG{__WARN__} = sub { push @warn, @_ };
$hub->subscribe(err => sub { die "boom\n" });
$hub->subscribe(err => sub ($m, @) { push @got, "after:$m" });
is($hub->publish(err => 'z'), 2, 'a dying callback does not stop delivery');
is($got[-1], 'after:z', 'the next subscriber still gets it');
like($warn[0], qr/callback on 'err' failed: boom/, 'and the error is warned about');

@got = ();
$hub->room_add(lobby => 'm1', sub ($m, $room) { push @got, "m1:$room:$m" });
$hub->room_add(lobby => 'm2', sub ($m, $room) { push @got, "m2:$m" });
$hub->room_add(lobby => 'm1', sub ($m, $room) { push @got, "m1again:$m" });
is_deeply($hub->room_members('lobby'), [qw(m2 m1)], 'a member is in a room once (re-adding replaces)');
is($hub->room_send(lobby => 'hi', exclude => 'm2'), 1, 'room_send with exclude');
is(join(',', @got), 'm1again:hi', 'reaches the others');
$hub->room_remove(lobby => 'm1');
is_deeply($hub->room_members('lobby'), ['m2'], 'room_remove');

PAGI::Simple::PubSub->reset;
my $default = PAGI::Simple::PubSub->instance;
isa_ok($default, 'PAGI::Simple::PubSub::Memory', 'the default instance');
is(PAGI::Simple::PubSub->instance, $default, 'one per process');
is(PAGI::Simple->new->pubsub, $default, 'apps use it unless given another');

package Incomplete { our @ISA = ('PAGI::Simple::PubSub'); sub new { bless {}, shift } }
ok(!eval { Incomplete->new->publish(x => 1) } && $@ =~ /Incomplete does not implement 'publish'/, 'the interface names a missing method');

# A backend that records what goes through it.
package Recording {
    our @ISA = ('PAGI::Simple::PubSub::Memory');
    our @calls;
    sub publish { my ($s, $ch) = @_; push @calls, "publish $ch"; shift->SUPER::publish(@_) }
    sub room_add { my ($s, $room) = @_; push @calls, "room_add $room"; shift->SUPER::room_add(@_) }
    sub room_send { my ($s, $room) = @_; push @calls, "room_send $room"; shift->SUPER::room_send(@_) }
}
package main;

my $rec = Recording->new;
my $app = PAGI::Simple->new(pubsub => $rec);
$app->websocket('/ws' => sub ($ws) {
    $ws->join('r');
    $ws->on(message => sub ($d) { $ws->broadcast(r => $d); $ws->broadcast($d) });
});
$app->sse('/events' => sub ($sse) { $sse->subscribe('feed') });
$app->post('/say' => sub ($c) { $c->text($c->app->sse_publish(feed => 'x')) });
my $client = client($app);
my $c1 = $client->websocket('/ws');
my $c2 = $client->websocket('/ws');
is(scalar @{ $rec->room_members('r') }, 2, 'both joined through the backend');
$c1->send_text('m');
is(join(',', map { $c2->receive } 1 .. 2), 'm,m', 'room and route broadcasts delivered by the backend');
my $stream = $client->sse('/events');
is($rec->subscribers('sse:feed'), 1, 'the SSE stream subscribed through the backend');
is($client->post('/say')->content, 1, 'sse_publish through the backend');
is($stream->next_event->{data}, 'x', 'reaches the stream');
is(join(',', @Recording::calls), 'room_add r,room_add r,room_send r,publish ws-route:/ws,publish sse:feed',
    'every operation went through the replaceable backend');
$_->close for $c1, $c2, $stream;
$client->stop;
done_testing;
